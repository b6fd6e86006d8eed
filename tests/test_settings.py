"""The settings: every MDAGENT_* variable the package reads is in one table, read in one place, shown in docs/cli.md."""

import re
from pathlib import Path

import pytest

from mdagent_hpc.settings import VARIABLES, env
from mdagent_hpc.settings.resolver import LLM_ENV, SettingsError, resolve

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdagent_hpc"


def test_every_variable_the_package_names_is_in_the_table_and_in_docs_cli():
    named = {m for p in PACKAGE.rglob("*.py") for m in re.findall(r"MDAGENT_[A-Z_]*[A-Z]", p.read_text())}
    named -= {"MDAGENT_USER", "MDAGENT_LLM"}  # set for a job's environment (PBS -v); a prefix in messages
    assert named <= set(VARIABLES), named - set(VARIABLES)
    assert set(LLM_ENV.values()) <= set(VARIABLES)
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert all(f"| `{name}` |" in docs for name in VARIABLES)


def test_the_environment_is_read_for_them_only_in_settings():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "settings":
            assert not re.search(r"(environ\.get|getenv)\(\s*[\"']MDAGENT_", path.read_text()), path


def test_env_refuses_a_name_outside_the_table_and_treats_empty_as_unset(monkeypatch):
    with pytest.raises(KeyError):
        env("MDAGENT_NO_SUCH")
    monkeypatch.setenv("MDAGENT_SERVER", "  ")
    assert env("MDAGENT_SERVER") is None


def test_users_db_from_the_environment_over_server_json(monkeypatch, tmp_path):
    monkeypatch.setenv("MDAGENT_HOME", str(tmp_path))
    monkeypatch.delenv("MDAGENT_USERS_DB", raising=False)
    assert resolve().users_db is None
    (tmp_path / "server.json").write_text('{"profile": "p", "users_db": "postgresql://saved/db"}')
    assert resolve().users_db == "postgresql://saved/db"
    monkeypatch.setenv("MDAGENT_USERS_DB", "sqlite:///env.db")
    assert resolve().users_db == "sqlite:///env.db"
    assert resolve({"users_db": "sqlite:///given.db"}).users_db == "sqlite:///given.db"
    with pytest.raises(SettingsError, match=r"override 'colour'"):
        resolve({"colour": "red"})
