"""``/api/v1``: repositories, their versions (tag → bundle) and specs, for the CLI and the gallery."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from modelhall.registry.auth.policy import Action, Outcome, decide, member_clause, permitted_actions, visible_clause
from modelhall.registry.auth.principal import Principal
from modelhall.registry.api.schemas import (
    MAX_OFFSET,
    CollaboratorIn,
    Identity,
    RepositoryCard,
    RepositoryOut,
    RepositoryUpdate,
    Version,
    VersionSummary,
)
from modelhall.registry.catalog import LATEST_TAG, refresh_catalog
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Collaborator, Manifest, Repository, Tag, User
from modelhall.registry.metadata import versions_of
from modelhall.registry.oci.access import NOT_FOUND_DETAIL

router = APIRouter(prefix="/api/v1", tags=["repositories"])


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


def pinned_digest(db: Session, principal: Principal, repository: Repository) -> str | None:
    """The one version that ``principal`` may see of ``repository``: a pinned share link's, for a holder
    who sees the repository only through it (None: every version)."""
    share = principal.share
    if share is None or share.repository_id != repository.id or share.digest is None:
        return None
    if Action.VIEW in permitted_actions(db, replace(principal, share=None), repository.name, repository):
        return None
    return share.digest


def visible_versions(db: Session, principal: Principal, repository: Repository) -> list[tuple[Tag, Manifest]]:
    """The repository's tagged versions, newest first, that ``principal`` may see."""
    pinned = pinned_digest(db, principal, repository)
    versions = versions_of(db, repository)
    return versions if pinned is None else [(tag, manifest) for tag, manifest in versions if manifest.digest == pinned]


def summary(tag: Tag, manifest: Manifest) -> VersionSummary:
    return VersionSummary(tag=tag.name, digest=manifest.digest, version=(manifest.spec or {}).get("version"),
                          size=manifest.total_size, pushed_at=tag.updated_at)


def repository_card(repository: Repository, has_thumbnail: bool) -> RepositoryCard:
    return RepositoryCard(
        name=repository.name, namespace=repository.namespace, visibility=repository.visibility,  # type: ignore[arg-type]
        weights=repository.weights, description=repository.description,  # type: ignore[arg-type]
        task=repository.task, framework=repository.framework, license=repository.license, tags=repository.tags,
        input_types=repository.input_types.split(), output_types=repository.output_types.split(),
        run_count=repository.run_count, latest_digest=repository.latest_digest,
        thumbnail=f"/api/v1/repos/{repository.name}/thumbnail" if has_thumbnail else None,
        created_at=repository.created_at, updated_at=repository.updated_at,
    )


def _has_thumbnail(db: Session, repository: Repository) -> bool:
    return db.scalar(select(Manifest.id).where(Manifest.repository_id == repository.id,
                                               Manifest.digest == repository.latest_digest,
                                               Manifest.thumbnail.is_not(None))) is not None


def repository_out(db: Session, repository: Repository, principal: Principal | None = None) -> RepositoryOut:
    """The repository as ``principal`` may see it (a pinned link: its one version; none: every version)."""
    pinned = pinned_digest(db, principal, repository) if principal else None
    versions = visible_versions(db, principal, repository) if principal else versions_of(db, repository)
    latest = next((v for v in versions if v[0].name == LATEST_TAG), versions[0] if versions else None)
    card = repository_card(repository, pinned is None and _has_thumbnail(db, repository))
    if pinned is not None:
        card.latest_digest = pinned
    return RepositoryOut(**card.model_dump(), latest=summary(*latest) if latest else None)


@router.get("/whoami", response_model=Identity)
def whoami(principal: Principal = Depends(get_principal)) -> Identity:
    return Identity(name=principal.name, scopes=sorted(principal.scopes))


SORTS = {"recent": (Repository.updated_at.desc(), Repository.name), "runs": (Repository.run_count.desc(),
                                                                           Repository.name),
         "name": (Repository.name,)}


@router.get("/repos", response_model=list[RepositoryCard])
def list_repositories(response: Response, q: str | None = Query(default=None, max_length=100),
                      namespace: str | None = None, task: str | None = None, framework: str | None = None,
                      license: str | None = None, input_type: str | None = None,  # noqa: A002 - the API's word
                      output_type: str | None = None,
                      sort: Literal["recent", "runs", "name"] = "recent",
                      mine: bool = Query(default=False, description="only those the caller owns or is a member of"),
                      limit: int = Query(default=50, ge=1, le=200), offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
                      db: Session = Depends(get_db),
                      principal: Principal = Depends(get_principal)) -> list[RepositoryCard]:
    """Repositories the caller may see. ``q`` searches name, description, tags and model card; the
    filters match exactly (``input_type=image&output_type=label`` for "image → label").
    ``X-Total-Count`` says how many match in all."""
    query = select(Repository).where(member_clause(principal) if mine else visible_clause(principal))
    for column, value in ((Repository.namespace, namespace), (Repository.task, task),
                          (Repository.framework, framework), (Repository.license, license)):
        if value:
            query = query.where(column == value)
    if input_type:
        query = query.where(Repository.input_types.contains(f" {input_type} "))
    if output_type:
        query = query.where(Repository.output_types.contains(f" {output_type} "))
    for word in (q or "").lower().split():
        query = query.where(Repository.search_text.contains(word, autoescape=True))
    response.headers["X-Total-Count"] = str(db.scalar(select(func.count()).select_from(query.subquery())))
    page = list(db.scalars(query.order_by(*SORTS[sort]).offset(offset).limit(limit)))
    with_thumbnail = set(db.scalars(select(Manifest.repository_id).where(
        Manifest.repository_id.in_([r.id for r in page]), Manifest.thumbnail.is_not(None),
        Manifest.digest == select(Repository.latest_digest).where(Repository.id == Manifest.repository_id)
        .scalar_subquery())))
    return [repository_card(r, r.id in with_thumbnail) for r in page]


@router.get("/repos/facets")
def facets(db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> dict[str, list[str]]:
    """The values the listing's filters can take, among the repositories the caller may see.
    (Owners are many: the gallery asks for one by name instead.)"""
    visible = select(Repository).where(visible_clause(principal)).subquery()
    values = {name: sorted(v for v in db.scalars(select(getattr(visible.c, name)).distinct()) if v)
              for name in ("task", "framework", "license")}
    for name in ("input_types", "output_types"):
        values[name] = sorted({t for joined in db.scalars(select(getattr(visible.c, name)).distinct())
                               for t in joined.split()})
    return values


@router.get("/repos/{name:path}/thumbnail", include_in_schema=False)
def thumbnail(name: str, db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> Response:
    repository = visible_repository(db, principal, name)
    digest = pinned_digest(db, principal, repository) or repository.latest_digest
    image = db.scalar(select(Manifest.thumbnail).where(Manifest.repository_id == repository.id,
                                                       Manifest.digest == digest))
    if image is None:
        raise HTTPException(404, f"{name} has no thumbnail")
    return Response(image, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/repos/{name:path}/versions", response_model=list[VersionSummary])
def list_versions(name: str, db: Session = Depends(get_db),
                  principal: Principal = Depends(get_principal)) -> list[VersionSummary]:
    repository = visible_repository(db, principal, name)
    return [summary(tag, manifest) for tag, manifest in visible_versions(db, principal, repository)]


@router.get("/repos/{name:path}/versions/{tag}", response_model=Version)
def get_version(name: str, tag: str, db: Session = Depends(get_db),
                principal: Principal = Depends(get_principal)) -> Version:
    repository = visible_repository(db, principal, name)
    for version_tag, manifest in visible_versions(db, principal, repository):
        if version_tag.name == tag:
            return Version(**summary(version_tag, manifest).model_dump(), spec=manifest.spec,
                           readme=manifest.readme, annotations=manifest.annotations)
    raise HTTPException(404, f"{name} has no version {tag}")


@router.get("/repos/{name:path}", response_model=RepositoryOut)
def get_repository(name: str, db: Session = Depends(get_db),
                   principal: Principal = Depends(get_principal)) -> RepositoryOut:
    return repository_out(db, visible_repository(db, principal, name), principal)


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
        refresh_catalog(db, repository)
    db.commit()
    return repository_out(db, repository)


@router.put("/repos/{name:path}/collaborators/{user}", status_code=204)
def add_collaborator(name: str, user: str, body: CollaboratorIn, db: Session = Depends(get_db),
                     principal: Principal = Depends(get_principal)) -> Response:
    """Give a user a role on this repository alone (``reader`` or ``maintainer``); needs maintainer rights."""
    repository = visible_repository(db, principal, name, Action.MANAGE)
    member = db.scalar(select(User).where(User.name == user))
    if member is None:
        raise HTTPException(404, f"no user {user}")
    db.merge(Collaborator(repository_id=repository.id, user_id=member.id, role=body.role))
    db.commit()
    return Response(status_code=204)


@router.delete("/repos/{name:path}/collaborators/{user}", status_code=204)
def remove_collaborator(name: str, user: str, db: Session = Depends(get_db),
                        principal: Principal = Depends(get_principal)) -> Response:
    repository = visible_repository(db, principal, name, Action.MANAGE)
    member = db.scalar(select(User).where(User.name == user))
    if member is not None:
        db.execute(delete(Collaborator).where(Collaborator.repository_id == repository.id,
                                              Collaborator.user_id == member.id))
        db.commit()
    return Response(status_code=204)
