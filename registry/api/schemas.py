"""The REST API's response and request bodies (and so its OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Identity(BaseModel):
    name: str | None = Field(description="the user, or null for anonymous")
    scopes: list[str]


class VersionSummary(BaseModel):
    tag: str
    digest: str
    version: str | None = Field(description="the version the bundle's spec declares")
    size: int = Field(description="bytes of the manifest and every blob it names")
    pushed_at: datetime


class Version(VersionSummary):
    spec: dict[str, Any] | None
    readme: str | None
    annotations: dict[str, Any]


Visibility = Literal["public", "internal", "private"]
Weights = Literal["downloadable", "hidden"]


class RepositoryOut(BaseModel):
    name: str
    namespace: str
    visibility: Visibility
    weights: Weights = Field(description="hidden: only members may pull the artifact; others may still run it")
    description: str
    task: str | None
    created_at: datetime
    updated_at: datetime
    latest: VersionSummary | None


class RepositoryUpdate(BaseModel):
    visibility: Visibility | None = None
    weights: Weights | None = None
    description: str | None = Field(default=None, max_length=2000)
