"""Built environments as OCI artifacts: found by requirements key, and shared across repositories.

A cluster runtime builds a version's environment (the packages it needs beyond the model-server
image's) once per requirements key, in a Job that pushes it to the version's repository as an
artifact of type ``ENVIRONMENT_ARTIFACT_TYPE`` annotated with the key (only such a Job's token may
push one: ``registry/oci/manifests.py``). A version of another repository with the same key gets the
same artifact recorded in its own repository, so that its pods' version pull token, which reaches
its own repository only, can fetch it. Only an artifact such a token stored carries the key
(``Manifest.environment_key``): nothing an author pushes is ever found here.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelhall.adapters.storage.base import BlobStore
from modelhall.registry.db.models import Manifest, Repository
from modelhall.registry.metadata import link_blob, save_manifest


class StoredEnvironments:
    """Environment artifacts in the registry, as a cluster runtime asks for them (``EnvironmentArtifacts``)."""

    def __init__(self, sessions: sessionmaker[Session], store: BlobStore):
        self.sessions, self.store = sessions, store

    def find(self, key: str, repository: str) -> str | None:
        """The digest of the environment artifact for ``key`` in ``repository``, adopting one built for
        another repository (its blobs linked, its manifest recorded here); None if none was built."""
        with self.sessions() as db:
            target = db.scalar(select(Repository).where(Repository.name == repository))
            if target is None:
                return None
            own = db.scalar(select(Manifest).where(Manifest.environment_key == key,
                                                   Manifest.repository_id == target.id).limit(1))
            if own is not None:
                return own.digest
            built = db.scalar(select(Manifest).where(Manifest.environment_key == key).order_by(Manifest.id).limit(1))
            return self._adopt(db, built, target) if built is not None else None

    def _adopt(self, db: Session, manifest: Manifest, target: Repository) -> str:
        document = json.loads(b"".join(self.store.read(manifest.digest)))
        for descriptor in [document["config"], *document["layers"]]:
            link_blob(db, target, descriptor["digest"], descriptor["size"])
        save_manifest(db, target, {
            "digest": manifest.digest, "media_type": manifest.media_type, "size": manifest.size,
            "artifact_type": manifest.artifact_type, "annotations": manifest.annotations,
            "total_size": manifest.total_size, "environment_key": manifest.environment_key})
        db.commit()
        return manifest.digest
