"""Sites, the clusters and machines LAMMPS runs on (docs/sites.md): list the site configs, add one (validated, kept,
its AiiDA computer and code set up), test one stage by stage. Adding and testing use this machine's AiiDA profile."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mdagent_hpc.api.local_only import refuse_through_server

if TYPE_CHECKING:
    from mdagent_hpc.execution.site import SiteConfig
    from mdagent_hpc.workflows.probe import Stage

SERVER_SITES = "whose sites its admin sets up"


@dataclass
class SiteAdded:
    site: SiteConfig
    path: Path  # where the config is kept
    changed: bool  # whether that file is new or different
    code: str  # the AiiDA code's full label
    changes: list[str]  # what was created or updated in AiiDA (empty: all up to date)


def list_sites() -> list[dict]:
    """The site configs found here (your folder, MDAGENT_SITE_CONFIGS, the bundled ones; the first of a name wins):
    name, scheduler, transport, host, lammps, path, and `problem` (None, or why the file is not a valid config)."""
    from mdagent_hpc.execution.registry import site_files
    from mdagent_hpc.execution.site import SiteConfigError, load_site

    rows = []
    for name, path in sorted(site_files().items()):
        try:
            config = load_site(path)
        except SiteConfigError as exc:
            rows.append({"name": name, "path": str(path), "problem": exc.problems[0]})
            continue
        rows.append(
            {
                "name": name,
                "scheduler": config.scheduler,
                "transport": config.transport.type,
                "host": config.transport.host or "localhost",
                "lammps": config.lammps.image or config.lammps.binary,
                "path": str(path),
                "problem": None,
            }
        )
    return rows


def add_site(file: str | Path) -> SiteAdded:
    """Validate a site config file, keep it as yours (MDAGENT_HOME/sites/NAME.yaml), and create or update its AiiDA
    computer and code."""
    refuse_through_server("adding a site", SERVER_SITES)
    from mdagent_hpc.api.local import load_profile
    from mdagent_hpc.execution.computers import ensure_site
    from mdagent_hpc.execution.registry import add_site as keep

    config, path, changed = keep(file)
    load_profile()
    setup = ensure_site(config)
    return SiteAdded(config, path, changed, setup.code.full_label, list(setup.changes))


def test_site(name: str) -> Iterator[Stage]:
    """Reach site NAME stage by stage (AiiDA computer and code, connection, scheduler, a 1-step LAMMPS job, reading
    it back), each `Stage` (name, ok, seconds, detail, fix) yielded as it finishes; stops after the first failure."""
    refuse_through_server("testing a site", SERVER_SITES)
    from mdagent_hpc.api.local import load_profile
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.workflows.probe import probe_site

    config = find_site(name)
    load_profile()
    return probe_site(config)


test_site.__test__ = False  # a public name, not a test, wherever a test module imports it
