"""Packing a bundle directory into an OCI artifact, deterministically.

The same directory always gives the same manifest digest: entries are sorted, owners
and mtimes are fixed, gzip carries no timestamp, and the ``created`` annotation is
``SOURCE_DATE_EPOCH`` or else the newest file's mtime.

    manifest (artifactType application/vnd.modelhall.bundle.v1)
    ├── config   the spec as canonical JSON
    ├── layer 0  code.tar.gz: every file that is not ignored and not weights
    └── layer N  one per weights file, raw, titled with its path
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pathspec

from modelhall.bundle import mediatypes as mt
from modelhall.bundle.digests import digest_bytes, digest_file
from modelhall.spec import Spec, load_spec_file

IGNORE_FILENAME = ".modelhallignore"
ALWAYS_IGNORED = [".git/", "__pycache__/", "*.pyc", ".venv/", ".DS_Store"]
GZIP_LEVEL = 6


class PackError(ValueError):
    pass


@dataclass(frozen=True)
class Blob:
    """One blob of a packed bundle: its descriptor and where its bytes are."""

    descriptor: dict[str, Any]
    path: Path | None = None
    data: bytes | None = None

    @property
    def digest(self) -> str:
        return self.descriptor["digest"]

    @property
    def size(self) -> int:
        return self.descriptor["size"]

    def open(self) -> BinaryIO:
        return self.path.open("rb") if self.path else io.BytesIO(self.data or b"")


@dataclass(frozen=True)
class PackedBundle:
    spec: Spec
    config: Blob
    layers: list[Blob]
    manifest: bytes

    @property
    def digest(self) -> str:
        return digest_bytes(self.manifest)

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


@contextmanager
def pack_bundle(directory: Path, source: str | None = None) -> Iterator[PackedBundle]:
    """Pack ``directory``; the code layer lives in a temp dir until the context exits."""
    directory = directory.resolve()
    spec = load_spec_file(directory)
    files = list_bundle_files(directory)
    weight_matcher = pathspec.GitIgnoreSpec.from_lines(spec.files.weights)
    weights = [f for f in files if weight_matcher.match_file(f)]
    code = [f for f in files if f not in set(weights)]
    with tempfile.TemporaryDirectory(prefix="modelhall-pack-") as scratch:
        code_path = Path(scratch) / mt.CODE_LAYER_TITLE
        write_code_layer(directory, code, code_path)
        layers = [_file_blob(code_path, mt.CODE_MEDIA_TYPE, mt.CODE_LAYER_TITLE)]
        layers += [_file_blob(directory / name, mt.WEIGHTS_MEDIA_TYPE, name) for name in weights]
        config_bytes = canonical_json(spec.to_json_dict())
        config = Blob(_descriptor(mt.SPEC_MEDIA_TYPE, digest_bytes(config_bytes), len(config_bytes)), data=config_bytes)
        annotations = _manifest_annotations(spec, directory, files, source)
        manifest = canonical_json({
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.BUNDLE_ARTIFACT_TYPE,
            "config": config.descriptor,
            "layers": [layer.descriptor for layer in layers],
            "annotations": annotations,
        })
        yield PackedBundle(spec=spec, config=config, layers=layers, manifest=manifest)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def list_bundle_files(directory: Path) -> list[str]:
    """Relative POSIX paths of the files to pack, sorted, without ignored ones."""
    patterns = list(ALWAYS_IGNORED)
    ignore_file = directory / IGNORE_FILENAME
    if ignore_file.exists():
        patterns += ignore_file.read_text().splitlines()
    ignored = pathspec.GitIgnoreSpec.from_lines(patterns)
    files = []
    for root, dirs, names in os.walk(directory):
        relative_root = Path(root).relative_to(directory)
        dirs[:] = sorted(d for d in dirs if not ignored.match_file(f"{(relative_root / d).as_posix()}/"))
        for name in names:
            relative = (relative_root / name).as_posix()
            if not ignored.match_file(relative):
                _refuse_escaping_link(directory, relative)
                files.append(relative)
    return sorted(files)


def write_code_layer(directory: Path, names: list[str], target: Path) -> None:
    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                 compresslevel=GZIP_LEVEL) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                info = _normalised_info(directory / name, name)
                if info.isfile():
                    with (directory / name).open("rb") as content:
                        tar.addfile(info, content)
                else:
                    tar.addfile(info)


def _normalised_info(path: Path, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
        return info
    info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    info.size = path.stat().st_size
    return info


def _refuse_escaping_link(directory: Path, relative: str) -> None:
    path = directory / relative
    if path.is_symlink() and not path.resolve().is_relative_to(directory):
        raise PackError(f"{relative} is a link to {os.readlink(path)}, outside the bundle")


def _file_blob(path: Path, media_type: str, title: str) -> Blob:
    digest, size = digest_file(path)
    return Blob(_descriptor(media_type, digest, size, {mt.ANNOTATION_TITLE: title}), path=path)


def _descriptor(media_type: str, digest: str, size: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        descriptor["annotations"] = annotations
    return descriptor


def _manifest_annotations(spec: Spec, directory: Path, files: list[str], source: str | None) -> dict[str, str]:
    annotations = {
        mt.ANNOTATION_CREATED: _created(directory, files),
        mt.ANNOTATION_TITLE: spec.name,
        mt.ANNOTATION_VERSION: spec.version,
    }
    if spec.description:
        annotations[mt.ANNOTATION_DESCRIPTION] = spec.description
    source = source or _git_remote(directory)
    if source:
        annotations[mt.ANNOTATION_SOURCE] = source
    return annotations


def _created(directory: Path, files: list[str]) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    timestamp = int(epoch) if epoch else max(int((directory / f).lstat().st_mtime) for f in files)
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git_remote(directory: Path) -> str | None:
    if not (directory / ".git").exists():
        return None
    result = subprocess.run(["git", "-C", str(directory), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or None
