"""OCI media types and annotation keys of a Modelhall bundle."""

from typing import Any

BUNDLE_ARTIFACT_TYPE = "application/vnd.modelhall.bundle.v1"
SPEC_MEDIA_TYPE = "application/vnd.modelhall.spec.v1+json"
CODE_MEDIA_TYPE = "application/vnd.modelhall.code.v1.tar+gzip"
WEIGHTS_MEDIA_TYPE = "application/vnd.modelhall.weights.v1"
# A built environment (the packages a version needs beyond the model-server image's), one per requirements key.
ENVIRONMENT_ARTIFACT_TYPE = "application/vnd.modelhall.environment.v1"
ENVIRONMENT_CONFIG_TYPE = "application/vnd.modelhall.environment.config.v1+json"
ENVIRONMENT_LAYER_TYPE = "application/vnd.modelhall.environment.layer.v1.tar+gzip"
ANNOTATION_ENVIRONMENT_KEY = "io.modelhall.environment.key"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY_JSON = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"
ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_ORAS_UNPACK = "io.deis.oras.content.unpack"

CODE_LAYER_TITLE = "code.tar.gz"


def is_folder_archive(layer: dict[str, object]) -> bool:
    """A directory packed as tar+gzip: a bundle's code layer, or a folder pushed by oras.

    oras marks folders with an unpack annotation; oras-py drops it and leaves only the
    tar+gzip media type and a title.
    """
    annotations = layer.get("annotations") or {}
    assert isinstance(annotations, dict)
    return (layer.get("mediaType") in (CODE_MEDIA_TYPE, OCI_LAYER_TAR_GZIP)
            or annotations.get(ANNOTATION_ORAS_UNPACK) == "true")


def descriptors(document: dict[str, Any]) -> list[dict[str, Any]]:
    """What a manifest names: an index's manifests, or an image manifest's config and layers."""
    if "manifests" in document:
        return list(document.get("manifests") or [])
    return [document["config"], *(document.get("layers") or [])] if document.get("config") else []


def version_size(body: bytes, document: dict[str, Any]) -> int:
    """A version's size, the one definition (the versions API and ``modelhall inspect`` both show it):
    the bytes of the manifest and of every blob it names."""
    return len(body) + sum(d.get("size", 0) for d in descriptors(document))
