"""The fake vLLM server for tests: mdagent_hpc.llm.replay.FakeOpenAIServer, plus a pytest fixture."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mdagent_hpc.llm.replay import Answer, FakeOpenAIServer

__all__ = ["FakeOpenAIServer", "fake_openai"]


@pytest.fixture
def fake_openai() -> Iterator[Callable[..., FakeOpenAIServer]]:
    """Factory fixture: `srv = fake_openai(["answer", {"status": 500}])`; servers stop after the test."""
    servers: list[FakeOpenAIServer] = []

    def start(answers: list[Answer] | None = None, **kwargs: Any) -> FakeOpenAIServer:
        servers.append(FakeOpenAIServer(answers, **kwargs).start())
        return servers[-1]

    yield start
    for srv in servers:
        srv.stop()
