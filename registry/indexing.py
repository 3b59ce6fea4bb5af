"""Recognising a Modelhall bundle in a pushed manifest and reading its spec and README.

Three shapes are understood:

- a Modelhall bundle: the config blob is the spec as JSON, README.md is in the code layer;
- plain ``oras push`` of files: a layer titled ``modelhall.yaml`` (and maybe ``README.md``);
- plain ``oras push`` of a folder: a tar+gzip layer titled with the folder that holds
  ``<folder>/modelhall.yaml``.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from modelhall.bundle import mediatypes as mt
from modelhall.bundle.unpack import ARCHIVE_READ_ERRORS, IteratorReader, open_tar_gz_stream
from modelhall.spec import SPEC_FILENAME, Spec, SpecError, parse_spec_json, parse_spec_yaml

MAX_SPEC_BYTES = 1024 * 1024
MAX_README_BYTES = 512 * 1024
README_NAMES = ("README.md", "readme.md", "README")

ReadBlob = Callable[[str, int], bytes]
StreamBlob = Callable[[str], Iterator[bytes]]


@dataclass(frozen=True)
class BundleIndex:
    spec: Spec
    readme: str | None


class BundleSpecInvalid(ValueError):
    pass


def index_manifest(manifest: dict[str, Any], read_blob: ReadBlob, stream_blob: StreamBlob) -> BundleIndex | None:
    """The bundle's spec and README, None for an artifact that is no bundle.

    Raises :class:`BundleSpecInvalid` (with the field-naming message) for a bundle whose spec is wrong.
    """
    layers = manifest.get("layers") or []
    config = manifest.get("config") or {}
    try:
        if manifest.get("artifactType") == mt.BUNDLE_ARTIFACT_TYPE or config.get("mediaType") == mt.SPEC_MEDIA_TYPE:
            spec = parse_spec_json(read_blob(config["digest"], MAX_SPEC_BYTES), source="config")
            code = next((layer for layer in layers if layer.get("mediaType") == mt.CODE_MEDIA_TYPE), None)
            readme = _readme_in_tar(stream_blob(code["digest"]), prefix="") if code else None
            return BundleIndex(spec, readme)
        titled = {_title(layer): layer for layer in layers if _title(layer)}
        if SPEC_FILENAME in titled:
            spec = parse_spec_yaml(_text(read_blob(titled[SPEC_FILENAME]["digest"], MAX_SPEC_BYTES)))
            readme_layer = next((titled[name] for name in README_NAMES if name in titled), None)
            readme = _text(read_blob(readme_layer["digest"], MAX_README_BYTES)) if readme_layer else None
            return BundleIndex(spec, readme)
        for title, layer in titled.items():
            if mt.is_folder_archive(layer):
                found = _bundle_in_folder_layer(stream_blob(layer["digest"]), title)
                if found:
                    return found
    except SpecError as error:
        raise BundleSpecInvalid(str(error)) from None
    return None


def _title(layer: dict[str, Any]) -> str | None:
    return (layer.get("annotations") or {}).get(mt.ANNOTATION_TITLE)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _members(chunks: Iterator[bytes]) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Members of a tar+gzip blob; an unreadable one simply has no README or spec to find."""
    try:
        with open_tar_gz_stream(io.BufferedReader(IteratorReader(chunks))) as archive:
            for member in archive:
                yield member, archive
    except ARCHIVE_READ_ERRORS:
        return


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | None:
    if not member.isfile() or member.size > limit:
        return None
    extracted = archive.extractfile(member)
    return extracted.read() if extracted else None


def _readme_in_tar(chunks: Iterator[bytes], prefix: str) -> str | None:
    names = {prefix + name for name in README_NAMES}
    for member, archive in _members(chunks):
        if member.name.removeprefix("./") in names:
            content = _read_member(archive, member, MAX_README_BYTES)
            return _text(content) if content is not None else None
    return None


def _bundle_in_folder_layer(chunks: Iterator[bytes], folder: str) -> BundleIndex | None:
    spec_text = readme = None
    readme_names = {f"{folder}/{name}" for name in README_NAMES}
    for member, archive in _members(chunks):
        name = member.name.removeprefix("./")
        if name == f"{folder}/{SPEC_FILENAME}":
            content = _read_member(archive, member, MAX_SPEC_BYTES)
            spec_text = _text(content) if content is not None else None
        elif name in readme_names:
            content = _read_member(archive, member, MAX_README_BYTES)
            readme = _text(content) if content is not None else None
    if spec_text is None:
        return None
    return BundleIndex(parse_spec_yaml(spec_text), readme)
