"""What only this machine can do: its site configs and AiiDA computers, the models it serves as scheduler jobs, its
benchmarks and its training data. A shared server has no such routes, so with MDAGENT_SERVER set these functions say
so in one sentence instead of quietly using a local profile the user did not mean."""

from mdagent_hpc.errors import MDAgentError


def refuse_through_server(what: str, there: str) -> None:
    """An `MDAgentError` when calls go to a shared server (MDAGENT_SERVER, asked on every call)."""
    from mdagent_hpc.settings import env

    if env("MDAGENT_SERVER"):
        raise MDAgentError(
            f"{what} uses this machine's AiiDA profile, but MDAGENT_SERVER sends your work to a shared server, "
            f"{there}; unset MDAGENT_SERVER to do it here"
        )
