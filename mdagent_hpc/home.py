"""Where mdagent keeps its per-user state: config, AiiDA profile, caches."""

from __future__ import annotations

import os
from pathlib import Path

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.settings import env, mdagent_home

__all__ = ["HomeError", "ensure_home", "mdagent_home", "site_potentials_dir", "user_potentials_dir"]


class HomeError(MDAgentError, OSError):
    """MDAGENT_HOME cannot be used; the message says which folder and what to do."""


def ensure_home() -> Path:
    """The home folder, created if missing; `HomeError` when it cannot be created or written."""
    home = mdagent_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(
            f"cannot create mdagent's folder {home} ({exc.strerror}); set MDAGENT_HOME to a folder you can write"
        ) from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise HomeError(f"mdagent's folder {home} is not writable; set MDAGENT_HOME to a folder you can write")
    return home


def user_potentials_dir() -> Path:
    return mdagent_home() / "potentials"


def site_potentials_dir() -> Path | None:
    """A group-wide potentials folder, set by `MDAGENT_SITE_POTENTIALS` (site configs set it too)."""
    folder = env("MDAGENT_SITE_POTENTIALS")
    return Path(folder).expanduser() if folder else None
