"""Options shared by the commands (as aiida-core's `cmdline/params/options`): one definition each."""

import click


def json_option(what: str = "the result"):
    """`--json`: print `what` as JSON (field names in docs/cli.md) instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=f"print {what} as JSON")


SITE = click.option("--site", "site_name", help="where LAMMPS runs (`mdagent site list`; default: this machine)")


def db_options(command):
    """The PostgreSQL connection options of `server setup` and `server restore`."""
    for option in reversed(
        [
            click.option("--db-host", default="127.0.0.1", show_default=True),
            click.option("--db-port", default=5432, show_default=True, type=int),
            click.option("--db-user", default="postgres", show_default=True),
            click.option("--db-password", default="", envvar="MDAGENT_DB_PASSWORD", help="(or MDAGENT_DB_PASSWORD)"),
        ]
    ):
        command = option(command)
    return command
