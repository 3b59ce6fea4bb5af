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


# Database ids are 32-bit integers: a larger number in a request is a 422, not an overflow in the database.
MAX_ID = 2**31 - 1
MAX_OFFSET = 10**9
Visibility = Literal["public", "internal", "private"]
Weights = Literal["downloadable", "hidden"]


class RepositoryCard(BaseModel):
    """A repository as listings show it: everything comes from its own row (see registry/catalog.py)."""

    name: str
    namespace: str
    visibility: Visibility
    weights: Weights = Field(description="hidden: only members may pull the artifact; others may still run it")
    description: str
    task: str | None
    framework: str | None
    license: str | None
    tags: list[str]
    input_types: list[str]
    output_types: list[str]
    run_count: int
    latest_digest: str | None
    thumbnail: str | None = Field(description="URL of a small image of the model's first example, if it has one")
    created_at: datetime
    updated_at: datetime


class RepositoryOut(RepositoryCard):
    latest: VersionSummary | None


class RepositoryUpdate(BaseModel):
    visibility: Visibility | None = None
    weights: Weights | None = None
    description: str | None = Field(default=None, max_length=2000)


class CollaboratorIn(BaseModel):
    role: Literal["reader", "maintainer"] = "reader"
