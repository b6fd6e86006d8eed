"""What travels between `mdagent` (remote.py) and the server: request and answer bodies, pure pydantic."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from mdagent_hpc.models import Request
from mdagent_hpc.web import RequestRefusedError

API = "/api/v1"  # every route but /health is under it
KEY_HEADER = "authorization"  # "Bearer mdk_..."


class RunIn(BaseModel):
    request: Request


class SweepIn(BaseModel):
    spec: dict[str, Any] = Field(description="a SweepSpec as JSON (validated on the server)")


class QueryIn(BaseModel):
    filters: dict[str, Any] = Field(default_factory=dict, description="the options of api.find_runs")


class Submitted(BaseModel):
    pk: int
    uuid: str
    user: str


class Me(BaseModel):
    name: str
    email: str
    admin: bool
    group_read: bool
    quota: dict[str, Any]


def error_body(message: str, code: str) -> dict[str, Any]:
    """Every refusal: one sentence and a machine-readable code (the client shows the sentence)."""
    return {"error": {"message": message, "code": code}}


MAX_PK = 2**31 - 1  # AiiDA's node ids are 32-bit integers
PK = re.compile(r"\d{1,18}|(?=.*[a-fA-F-])[0-9a-fA-F][0-9a-fA-F-]{7,35}")  # a pk, or a UUID (or its start)
STATE = "mdagent"  # the scope key where the server's Guard keeps the request's id, user and outcome


def parse_pk(text: str, what: str = "run") -> str:
    """`text` if it looks like a pk (or a UUID, or its start), else a 400: nothing odd reaches the database."""
    if not PK.fullmatch(text) or (text.isdigit() and int(text) > MAX_PK):
        raise RequestRefusedError(400, "bad_request", f"{text[:40]!r} is not a {what} pk (a whole number)")
    return text
