"""`MDAgentError`: the base of every user-facing error, said in one sentence.

Each layer raises its own subclass (`LaunchError`, `SiteConfigError`, `SweepError`, `QueryError`, `LLMError`, ...),
so the faces translate errors in one place: the CLI shows the sentence and exits 2 (`cli/main.py`), the server
answers it as a 400 (`server/app.py`). Anything else is a bug, reported as one, never shown as a traceback.
"""


class MDAgentError(Exception):
    """A user mistake or a setup problem, said in one sentence."""
