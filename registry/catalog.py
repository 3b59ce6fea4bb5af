"""The catalog: each repository's newest version summarised on its own row, for listing and search.

Listing 10,000 models must not read 10,000 specs. So whenever what "the newest version"
means may change (a tag is pushed or deleted, a manifest deleted), the repository's row
is brought up to date: task, framework, license, tags, input and output types, and the
lower-cased text search runs over. Run counts grow as runs are recorded.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelhall.registry.db.models import Manifest, Repository, Tag
from modelhall.registry.metadata import versions_of

LATEST_TAG = "latest"
MAX_SEARCH_TEXT = 20_000


def newest_version(db: Session, repository: Repository) -> Manifest | None:
    """The manifest ``latest`` names, or else the most recently tagged one."""
    rows = versions_of(db, repository)
    for tag, manifest in rows:
        if tag.name == LATEST_TAG:
            return manifest
    return rows[0][1] if rows else None


def _types(fields: list[dict[str, Any]]) -> str:
    """``" image text "``: every type once, padded with spaces so that ``LIKE '% image %'`` matches whole names."""
    return " " + " ".join(sorted({str(field.get("type")) for field in fields})) + " " if fields else ""


def refresh_catalog(db: Session, repository: Repository) -> None:
    manifest = newest_version(db, repository)
    spec: dict[str, Any] = (manifest.spec if manifest else None) or {}
    repository.latest_digest = manifest.digest if manifest else None
    repository.task = spec.get("task")
    repository.framework = spec.get("framework")
    repository.license = spec.get("license")
    repository.tags = [str(tag) for tag in spec.get("tags") or []]
    repository.input_types = _types(spec.get("inputs") or [])
    repository.output_types = _types(spec.get("outputs") or [])
    words = [repository.name, repository.description, spec.get("name"), spec.get("description"),
             " ".join(repository.tags), (manifest.readme if manifest else None)]
    repository.search_text = " ".join(word for word in words if word).lower()[:MAX_SEARCH_TEXT]


def refresh_stale_catalogs(db: Session) -> int:
    """Fill the catalog of repositories that have versions but no summary yet (after an upgrade)."""
    stale = db.scalars(select(Repository).where(Repository.latest_digest.is_(None),
                                                Repository.id.in_(select(Tag.repository_id)))).all()
    for repository in stale:
        refresh_catalog(db, repository)
    db.commit()
    return len(stale)


def count_runs(db: Session, repository_id: int, added: int = 1) -> None:
    db.execute(update(Repository).where(Repository.id == repository_id)
               .values(run_count=Repository.run_count + added))
