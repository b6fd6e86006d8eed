import json
import os
import shutil
from pathlib import Path

import pytest
from corpus import CorpusError
from corpus import build as build_corpus

pytest_plugins = ["openai_server", "services"]  # fake_openai; slurm and sshd (started once per session)

REPO = Path(__file__).resolve().parents[1]
CORPUS_ERROR = None
try:
    CORPUS = build_corpus()  # LAMMPS examples from Debian with reference logs run here; cached (tests/corpus.py)
    MANIFEST = json.loads((CORPUS / "manifest.json").read_text())["examples"]
except CorpusError as exc:  # said in one sentence once pytest has started (pytest_configure)
    CORPUS, MANIFEST, CORPUS_ERROR = Path(), [], str(exc)


def pytest_configure(config):
    if CORPUS_ERROR:
        pytest.exit(CORPUS_ERROR, returncode=2)


def copy_example(src: Path, dest: Path) -> Path:
    """A writable copy of a (read-only) corpus folder."""
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return dest


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """The test session gets its own MDAGENT_HOME (config, AiiDA profile, caches), never the developer's."""
    os.environ["MDAGENT_HOME"] = str(tmp_path_factory.mktemp("mdagent-home"))
    os.environ.pop("MDAGENT_SITE_POTENTIALS", None)
    os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
    for key in [k for k in os.environ if k.startswith("MDAGENT_LLM_")]:
        os.environ.pop(key)
