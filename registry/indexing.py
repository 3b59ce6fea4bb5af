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

from PIL import Image

from modelhall.bundle import mediatypes as mt
from modelhall.bundle.unpack import ARCHIVE_READ_ERRORS, IteratorReader, open_tar_gz_stream
from modelhall.spec import SPEC_FILENAME, Spec, SpecError, parse_spec_json, parse_spec_yaml

MAX_SPEC_BYTES = 1024 * 1024
MAX_README_BYTES = 512 * 1024
MAX_EXAMPLE_IMAGE_BYTES = 8 * 1024 * 1024
THUMBNAIL_SIZE = 320
README_NAMES = ("README.md", "readme.md", "README")

ReadBlob = Callable[[str, int], bytes]
StreamBlob = Callable[[str], Iterator[bytes]]


@dataclass(frozen=True)
class BundleIndex:
    spec: Spec
    readme: str | None
    thumbnail: bytes | None = None  # a small PNG of the first example image, for the gallery


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
            if code is None:
                return BundleIndex(spec, None)
            return BundleIndex(spec, *_readme_and_thumbnail_in_tar(stream_blob(code["digest"]), example_image(spec)))
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


def example_image(spec: Spec) -> str | None:
    """The bundle path of the first example given for an image input, if any."""
    images = [field.name for field in spec.inputs if field.type == "image"]
    for example in spec.examples:
        for name in images:
            if isinstance(example.get(name), str):
                return str(example[name]).removeprefix("./")
    return None


def make_thumbnail(data: bytes) -> bytes | None:
    """A PNG at most THUMBNAIL_SIZE on its longer side; None for what is not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG", optimize=True)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _readme_and_thumbnail_in_tar(chunks: Iterator[bytes], image_path: str | None) -> tuple[str | None, bytes | None]:
    readme = thumbnail = None
    for member, archive in _members(chunks):
        name = member.name.removeprefix("./")
        if name in README_NAMES and readme is None:
            content = _read_member(archive, member, MAX_README_BYTES)
            readme = _text(content) if content is not None else None
        elif name == image_path:
            content = _read_member(archive, member, MAX_EXAMPLE_IMAGE_BYTES)
            thumbnail = make_thumbnail(content) if content is not None else None
    return readme, thumbnail


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
