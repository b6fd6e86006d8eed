"""What travels between `mdagent` (remote.py) and the server: request and answer bodies, pure pydantic."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mdagent_hpc.models import Request

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
