"""Reading and writing the registry's records: repositories, blob links, manifests, tags.

Writes that concurrent pushes may race on (a new repository, a blob linked twice, a
manifest pushed twice) are idempotent inserts, so two replicas never fail each other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelhall.registry.auth.policy import namespace_of
from modelhall.registry.db.models import Base, BlobLink, Manifest, Repository, Tag, utcnow


def insert_ignoring_duplicates(db: Session, model: type[Base], values: dict[str, Any]) -> None:
    """``INSERT … ON CONFLICT DO NOTHING`` in the dialect of the session's database."""
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    db.execute(dialect.insert(model).values(**values).on_conflict_do_nothing())


def create_repository(db: Session, name: str) -> Repository:
    insert_ignoring_duplicates(db, Repository, {
        "name": name, "namespace": namespace_of(name), "visibility": "private", "description": "",
        "created_at": utcnow(), "updated_at": utcnow(),
    })
    return db.scalars(select(Repository).where(Repository.name == name)).one()


def link_blob(db: Session, repository: Repository, digest: str, size: int) -> None:
    insert_ignoring_duplicates(db, BlobLink, {
        "repository_id": repository.id, "digest": digest, "size": size, "created_at": utcnow(),
    })


def linked_blob(db: Session, repository: Repository, digest: str) -> BlobLink | None:
    return db.get(BlobLink, (repository.id, digest))


def unlink_blob(db: Session, repository: Repository, digest: str) -> None:
    """Forget that ``repository`` holds a blob. Its bytes stay for the garbage collector
    (``registry/gc.py``), which alone decides that nothing needs them any more."""
    db.execute(delete(BlobLink).where(BlobLink.repository_id == repository.id, BlobLink.digest == digest))


# Built once, as every request's statements are (see TOKEN_BY_HASH in auth/tokens.py).
MANIFEST_BY_DIGEST = select(Manifest).where(Manifest.repository_id == bindparam("repository_id"),
                                            Manifest.digest == bindparam("digest"))
MANIFEST_BY_TAG = (select(Manifest).join(Tag, (Tag.repository_id == Manifest.repository_id)
                                         & (Tag.digest == Manifest.digest))
                   .where(Tag.repository_id == bindparam("repository_id"), Tag.name == bindparam("tag")))


def find_manifest(db: Session, repository: Repository, digest: str) -> Manifest | None:
    return db.scalar(MANIFEST_BY_DIGEST, {"repository_id": repository.id, "digest": digest})


def resolve_tag(db: Session, repository: Repository, tag: str) -> str | None:
    record = db.get(Tag, (repository.id, tag))
    return record.digest if record else None


def find_version(db: Session, repository: Repository, reference: str) -> Manifest | None:
    """The manifest a tag or a digest names (tags hold no colon, digests do), in one query."""
    if ":" in reference:
        return find_manifest(db, repository, reference)
    return db.scalar(MANIFEST_BY_TAG, {"repository_id": repository.id, "tag": reference})


def save_manifest(db: Session, repository: Repository, values: dict[str, Any]) -> Manifest:
    insert_ignoring_duplicates(db, Manifest, {"repository_id": repository.id, "created_at": utcnow(), **values})
    manifest = find_manifest(db, repository, values["digest"])
    assert manifest is not None
    return manifest


def set_tag(db: Session, repository: Repository, tag: str, digest: str) -> None:
    record = db.get(Tag, (repository.id, tag))
    if record is None:
        insert_ignoring_duplicates(db, Tag, {"repository_id": repository.id, "name": tag, "digest": digest,
                                             "updated_at": utcnow()})
        record = db.get(Tag, (repository.id, tag))
    assert record is not None
    record.digest = digest
    record.updated_at = utcnow()
    repository.updated_at = utcnow()


def delete_tag(db: Session, repository: Repository, tag: str) -> None:
    db.execute(delete(Tag).where(Tag.repository_id == repository.id, Tag.name == tag))


def tags_of(db: Session, repository: Repository, after: str | None = None, limit: int | None = None) -> list[str]:
    query = select(Tag.name).where(Tag.repository_id == repository.id).order_by(Tag.name)
    if after:
        query = query.where(Tag.name > after)
    if limit is not None:
        query = query.limit(limit)
    return list(db.scalars(query))


def delete_manifest(db: Session, repository: Repository, digest: str) -> None:
    """Delete a manifest and the tags naming it; its bytes stay for the garbage collector."""
    db.execute(delete(Tag).where(Tag.repository_id == repository.id, Tag.digest == digest))
    db.execute(delete(Manifest).where(Manifest.repository_id == repository.id, Manifest.digest == digest))


def referrers_of(db: Session, repository: Repository, subject: str, artifact_type: str | None) -> list[Manifest]:
    query = select(Manifest).where(Manifest.repository_id == repository.id, Manifest.subject == subject)
    if artifact_type:
        query = query.where(Manifest.artifact_type == artifact_type)
    return list(db.scalars(query.order_by(Manifest.created_at, Manifest.digest)))


def versions_of(db: Session, repository: Repository) -> list[tuple[Tag, Manifest]]:
    """Tags that name a pushed manifest, newest first."""
    rows = db.execute(
        select(Tag, Manifest)
        .join(Manifest, (Manifest.repository_id == Tag.repository_id) & (Manifest.digest == Tag.digest))
        .where(Tag.repository_id == repository.id)
        .order_by(Tag.updated_at.desc(), Tag.name)
    )
    return [(tag, manifest) for tag, manifest in rows]
