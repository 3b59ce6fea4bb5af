"""``/api/v1``: repositories, their versions (tag → bundle) and specs, for the CLI and the gallery."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from modelhall.registry.auth.policy import Action, Outcome, decide, visible_clause
from modelhall.registry.auth.principal import Principal
from modelhall.registry.api.schemas import Identity, RepositoryOut, RepositoryUpdate, Version, VersionSummary
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Manifest, Repository, Tag
from modelhall.registry.oci.access import NOT_FOUND_DETAIL

router = APIRouter(prefix="/api/v1", tags=["repositories"])
LATEST_TAG = "latest"


def visible_repository(db: Session, principal: Principal, name: str, action: Action = Action.VIEW) -> Repository:
    """The repository if ``principal`` may do ``action``; reading what one may not see is a 404.

    (Unlike the OCI API, no client here needs a 401 to start a token flow.)
    """
    outcome, repository = decide(db, principal, name, action)
    if outcome is Outcome.ALLOW and repository is not None:
        return repository
    if outcome is Outcome.CHALLENGE and action is not Action.VIEW:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    if outcome is Outcome.DENIED:
        raise HTTPException(403, f"you may not {action.value} {name}")
    raise HTTPException(404, NOT_FOUND_DETAIL)


def versions_of(db: Session, repository: Repository) -> list[tuple[Tag, Manifest]]:
    """Tags that name a pushed manifest, newest first."""
    rows = db.execute(
        select(Tag, Manifest)
        .join(Manifest, (Manifest.repository_id == Tag.repository_id) & (Manifest.digest == Tag.digest))
        .where(Tag.repository_id == repository.id)
        .order_by(Tag.updated_at.desc(), Tag.name)
    )
    return [(tag, manifest) for tag, manifest in rows]


def summary(tag: Tag, manifest: Manifest) -> VersionSummary:
    return VersionSummary(tag=tag.name, digest=manifest.digest, version=(manifest.spec or {}).get("version"),
                          size=manifest.total_size, pushed_at=tag.updated_at)


def repository_out(db: Session, repository: Repository) -> RepositoryOut:
    versions = versions_of(db, repository)
    latest = next((v for v in versions if v[0].name == LATEST_TAG), versions[0] if versions else None)
    return RepositoryOut(
        name=repository.name, namespace=repository.namespace, visibility=repository.visibility,  # type: ignore[arg-type]
        weights=repository.weights,  # type: ignore[arg-type]
        description=repository.description, task=((latest[1].spec or {}).get("task") if latest else None),
        created_at=repository.created_at, updated_at=repository.updated_at,
        latest=summary(*latest) if latest else None,
    )


@router.get("/whoami", response_model=Identity)
def whoami(principal: Principal = Depends(get_principal)) -> Identity:
    return Identity(name=principal.name, scopes=sorted(principal.scopes))


@router.get("/repos", response_model=list[RepositoryOut])
def list_repositories(q: str | None = Query(default=None, max_length=100), namespace: str | None = None,
                      limit: int = Query(default=50, ge=1, le=200), offset: int = Query(default=0, ge=0),
                      db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> list[RepositoryOut]:
    """Repositories the caller may see, most recently updated first."""
    query = select(Repository).where(visible_clause(principal)).order_by(Repository.updated_at.desc(), Repository.name)
    if namespace:
        query = query.where(Repository.namespace == namespace)
    if q:
        pattern = f"%{q.lower()}%"
        query = query.where(or_(Repository.name.ilike(pattern), Repository.description.ilike(pattern)))
    return [repository_out(db, r) for r in db.scalars(query.offset(offset).limit(limit))]


@router.get("/repos/{name:path}/versions", response_model=list[VersionSummary])
def list_versions(name: str, db: Session = Depends(get_db),
                  principal: Principal = Depends(get_principal)) -> list[VersionSummary]:
    repository = visible_repository(db, principal, name)
    return [summary(tag, manifest) for tag, manifest in versions_of(db, repository)]


@router.get("/repos/{name:path}/versions/{tag}", response_model=Version)
def get_version(name: str, tag: str, db: Session = Depends(get_db),
                principal: Principal = Depends(get_principal)) -> Version:
    repository = visible_repository(db, principal, name)
    for version_tag, manifest in versions_of(db, repository):
        if version_tag.name == tag:
            return Version(**summary(version_tag, manifest).model_dump(), spec=manifest.spec,
                           readme=manifest.readme, annotations=manifest.annotations)
    raise HTTPException(404, f"{name} has no version {tag}")


@router.get("/repos/{name:path}", response_model=RepositoryOut)
def get_repository(name: str, db: Session = Depends(get_db),
                   principal: Principal = Depends(get_principal)) -> RepositoryOut:
    return repository_out(db, visible_repository(db, principal, name))


@router.patch("/repos/{name:path}", response_model=RepositoryOut)
def update_repository(name: str, update: RepositoryUpdate, db: Session = Depends(get_db),
                      principal: Principal = Depends(get_principal)) -> RepositoryOut:
    """Change visibility, weights or description; needs maintainer rights (and a ``write`` token)."""
    repository = visible_repository(db, principal, name, Action.MANAGE)
    if update.visibility is not None:
        repository.visibility = update.visibility
    if update.weights is not None:
        repository.weights = update.weights
    if update.description is not None:
        repository.description = update.description
    db.commit()
    return repository_out(db, repository)
