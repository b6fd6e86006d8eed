"""Where mdagent keeps its per-user state: config, AiiDA profile, caches."""

from __future__ import annotations

import os
from pathlib import Path


def mdagent_home() -> Path:
    """`MDAGENT_HOME`, else `$XDG_DATA_HOME/mdagent`, else `~/.local/share/mdagent`."""
    if env := os.environ.get("MDAGENT_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mdagent"


def user_potentials_dir() -> Path:
    return mdagent_home() / "potentials"


def site_potentials_dir() -> Path | None:
    """A group-wide potentials folder, set by `MDAGENT_SITE_POTENTIALS` (site configs set it too)."""
    env = os.environ.get("MDAGENT_SITE_POTENTIALS")
    return Path(env).expanduser() if env else None
