"""`mdagent users`: the people who may use the LLM gateway (and the shared server): keys, quotas, usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from mdagent_hpc.cli.main import UserError, emit_json, out
from mdagent_hpc.server.deploy import RESERVED, users_store
from mdagent_hpc.server.deploy import users_store as store  # noqa: F401 (`gateway serve` makes a local one)

QUOTAS = {  # option -> (Quota field, type, help)
    "--tokens-per-day": ("tokens_per_day", int, "LLM prompt + completion tokens per UTC day"),
    "--requests-per-minute": ("requests_per_minute", int, "LLM requests in any 60 s"),
    "--concurrent-runs": ("concurrent_runs", int, "runs in flight at once (shared server)"),
    "--sweep-points": ("sweep_points", int, "points in one sweep (shared server)"),
    "--core-hours-per-day": ("core_hours_per_day", float, "core-hours of jobs per UTC day (shared server)"),
}
NO_LIMIT = "none"
SHORT = {
    "tokens_per_day": "tokens/day",
    "requests_per_minute": "requests/min",
    "concurrent_runs": "runs",
    "sweep_points": "sweep points",
    "core_hours_per_day": "core-h/day",
}


class Limit(click.ParamType):
    """A non-negative number, or `none` for no limit."""

    name = "N|none"

    def __init__(self, kind: type):
        self.kind = kind

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() in (NO_LIMIT, "unlimited"):
            return NO_LIMIT
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number or 'none'", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return number


def quota_options(command):
    for option, (field, kind, text) in reversed(QUOTAS.items()):
        command = click.option(option, field, type=Limit(kind), help=f"{text}; 'none': no limit")(command)
    return command


def db_option(command):
    return click.option(
        "--db",
        envvar="MDAGENT_USERS_DB",
        metavar="URL",
        help="users database (default: MDAGENT_USERS_DB, else the shared server's in server.json, "
        "else an existing $MDAGENT_HOME/users.db)",
    )(command)


def given(quotas: dict) -> dict:
    return {k: (None if v == NO_LIMIT else v) for k, v in quotas.items() if v is not None}


def limits_text(quota) -> str:
    return ", ".join(f"{k}={v}" for k, v in quota.model_dump().items() if v is not None) or "no limits"


@click.group(short_help="Users of the gateway and the shared server: keys, quotas, usage.")
def users() -> None:
    """Users of the LLM gateway and the shared server (`mdagent server`) and their API keys (stored hashed), quotas
    and usage (see docs/llm.md, docs/deploy.md).

    Whoever can write the users database (MDAGENT_USERS_DB, else the one `mdagent server setup` saved, else
    $MDAGENT_HOME/users.db) administers it.
    """


@users.command("add")
@click.argument("name")
@quota_options
@click.option("--email", help="the user's e-mail (the shared server attributes their work to it)")
@click.option("--admin", is_flag=True, help="may administer the shared server")
@db_option
@click.option("--json", "as_json", is_flag=True, help="print the user and key as JSON")
def add(name, email, admin, db, as_json, **quotas) -> None:
    """Add user NAME and print their first API key (shown once: it is stored only as a hash)."""
    from mdagent_hpc.accounts.quotas import Quota
    from mdagent_hpc.server.access import identity
    from mdagent_hpc.server.deploy import default_quota

    with users_store(db, new_local=False) as s:
        quota = Quota(**(default_quota() | given(quotas)))
        user, key = s.add_user(name, quota, email=email, admin=admin, identity=identity, reserved=RESERVED)
    if as_json:
        emit_json({"name": user.name, "key": key, "quota": user.quota.model_dump()})
        return
    out().print(f"user {user.name} added ({limits_text(user.quota)})", highlight=False)
    out().print(f"API key (shown only now; give it to {user.name} privately): {key}", highlight=False, soft_wrap=True)


@users.command("defaults")
@quota_options
@click.option("--json", "as_json", is_flag=True, help="print the defaults as JSON")
def defaults(as_json, **quotas) -> None:
    """The quotas a user added without them gets on the shared server (set once here; `users set` changes one
    user's). With no option: show them. `mdagent server setup` starts them at modest limits, never unlimited."""
    from mdagent_hpc.server.deploy import DeployError, default_quota, quota_text, set_default_quota

    changes = given(quotas)
    found = set_default_quota(changes) if changes else default_quota()
    if not found:
        raise DeployError("default quotas are the shared server's, kept in its home's server.json: run this there")
    if as_json:
        emit_json(found)
    else:
        out().print(f"users added from now on get: {quota_text(found)}", highlight=False)


@users.command("key")
@click.argument("name")
@db_option
@click.option("--json", "as_json", is_flag=True, help="print the key as JSON")
def new_key(name, db, as_json) -> None:
    """Give user NAME another API key (their other keys stay valid until `mdagent users revoke NAME --key`)."""
    with users_store(db, new_local=False) as s:
        key = s.new_key(name)
    if as_json:
        emit_json({"name": name, "key": key})
    else:
        out().print(f"new API key for {name} (shown only now): {key}", highlight=False, soft_wrap=True)


@users.command("revoke")
@click.argument("name")
@click.option("--key", "prefix", metavar="PREFIX", help="revoke only this key (its first 12 characters, as listed)")
@db_option
def revoke(name, prefix, db) -> None:
    """Revoke user NAME (every key), or with --key one of their keys; takes effect on the next request."""
    with users_store(db, new_local=False) as s:
        n = s.revoke(name, prefix)
    what = f"key {prefix}" if prefix else f"user {name} and {n} active key(s)"
    out().print(f"revoked {what}", highlight=False)


@users.command("set")
@click.argument("name")
@quota_options
@db_option
def set_quota(name, db, **quotas) -> None:
    """Change user NAME's quotas (only those given; 'none' removes a limit)."""
    changes = given(quotas)
    if not changes:
        raise UserError("give at least one quota to change, e.g. --tokens-per-day 200000 (see --help)")
    with users_store(db, new_local=False) as s:
        user = s.set_quota(name, **changes)
    out().print(f"user {user.name}: {limits_text(user.quota)}", highlight=False)


@users.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True, help="print the users as JSON")
def list_users(db, as_json) -> None:
    """Every user: active or revoked, their keys (first characters only), quotas and tokens used today."""
    from rich.table import Table

    from mdagent_hpc.accounts.quotas import utc_day

    today = utc_day(datetime.now(UTC))
    with users_store(db, new_local=False) as s:
        found = s.users()
        used = {u.user: u for u in s.usage(since=today)}
    rows = [
        {
            "name": u.name,
            "active": u.active,
            "admin": u.admin,
            "email": u.email,
            "created_at": u.created_at.isoformat(timespec="seconds"),
            "revoked_at": u.revoked_at.isoformat(timespec="seconds") if u.revoked_at else None,
            "keys": [k.prefix for k in u.keys if k.revoked_at is None],
            "quota": u.quota.model_dump(),
            "tokens_today": used[u.name].tokens if u.name in used else 0,
        }
        for u in found
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out().print("no users yet: `mdagent users add NAME`")
        return
    table = Table("user", "status", "active keys", "limits", "tokens today", "created")
    for r, u in zip(rows, found, strict=True):
        table.add_row(
            r["name"] + (" (admin)" if r["admin"] else ""),
            "active" if r["active"] else "revoked",
            " ".join(r["keys"]) or "-",
            "\n".join(f"{SHORT[k]} {v}" for k, v in u.quota.model_dump().items() if v is not None) or "no limits",
            str(r["tokens_today"]),
            r["created_at"][:10],
        )
    out().print(table)


@users.command("usage")
@click.argument("name", required=False)
@click.option("--days", type=click.IntRange(min=1), default=7, show_default=True, help="UTC days back, today included")
@db_option
@click.option("--json", "as_json", is_flag=True, help="print the usage as JSON")
def usage(name, days, db, as_json) -> None:
    """LLM usage per user and UTC day, recorded by the gateway: requests, refusals, prompt and completion tokens."""
    from rich.table import Table

    from mdagent_hpc.accounts.quotas import utc_day

    since = utc_day(datetime.now(UTC) - timedelta(days=days - 1))
    with users_store(db, new_local=False) as s:
        rows = s.usage(name, since=since)
    if as_json:
        emit_json([r.model_dump() | {"tokens": r.tokens} for r in rows])
        return
    if not rows:
        out().print(f"no LLM usage since {since}" + (f" for {name}" if name else ""), highlight=False)
        return
    table = Table("day", "user", "requests", "refused", "prompt tokens", "completion tokens", "tokens")
    for r in rows:
        table.add_row(
            r.day,
            r.user,
            str(r.requests),
            str(r.refused),
            str(r.prompt_tokens),
            str(r.completion_tokens),
            str(r.tokens),
        )
    out().print(table)
