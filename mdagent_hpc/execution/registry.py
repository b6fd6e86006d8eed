"""Where site configs live: the user's folder (`mdagent site add`), folders in `MDAGENT_SITE_CONFIGS`, and the
`site_configs/` folder of a source checkout. The first folder that has a name wins."""

from __future__ import annotations

import shutil
from pathlib import Path

from mdagent_hpc.execution.site import SiteConfig, SiteConfigError, load_site
from mdagent_hpc.home import mdagent_home
from mdagent_hpc.settings import env

BUNDLED = Path(__file__).resolve().parents[2] / "site_configs"


def user_sites_dir() -> Path:
    return mdagent_home() / "sites"


def site_dirs() -> list[Path]:
    """The folders searched for `NAME.yaml`, first match first."""
    dirs = [user_sites_dir()]
    dirs += [Path(d).expanduser() for d in (env("MDAGENT_SITE_CONFIGS") or "").split(":") if d]
    if BUNDLED.is_dir():
        dirs.append(BUNDLED)
    return dirs


def site_files() -> dict[str, Path]:
    """Every site config file by the name in its file name, the first folder winning."""
    found: dict[str, Path] = {}
    for folder in site_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def find_site(name: str) -> SiteConfig:
    """The site called `name`; `SiteConfigError` says where it looked and which names exist."""
    path = site_files().get(name)
    if path is None:
        known = ", ".join(sorted(site_files())) or "none"
        raise SiteConfigError(f"no site '{name}' (known: {known}); add one with `mdagent site add FILE`")
    site = load_site(path)
    if site.name != name:
        raise SiteConfigError(f"{path}: the file is named {name}.yaml but says name: {site.name}; make them agree")
    return site


def add_site(path: str | Path) -> tuple[SiteConfig, Path, bool]:
    """Validate `path` and copy it into the user's folder as NAME.yaml; returns (site, copy, changed)."""
    site = load_site(path)
    dest = user_sites_dir() / f"{site.name}.yaml"
    text = Path(path).read_text()
    changed = not dest.exists() or dest.read_text() != text
    if changed:
        tmp = dest.with_suffix(".yaml.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            shutil.move(tmp, dest)
        except OSError as exc:
            raise SiteConfigError(
                f"cannot keep the site config in {dest.parent} ({exc.strerror}); set MDAGENT_HOME "
                "to a folder you can write"
            ) from None
    return site, dest, changed
