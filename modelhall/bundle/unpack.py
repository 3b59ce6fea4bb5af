"""Unpacking archives and bundles without trusting them.

Refuses absolute paths, ``..``, links that leave the target, hard links, device files,
duplicate entries and archives that expand past a limit. Everything is written into a
fresh temp dir beside the target and moved into place only when the whole archive was
accepted, so a refused archive leaves nothing behind.

We extract member by member with our own checks instead of ``tarfile``'s
``extractall`` and its extraction filters: the filters decide with
``os.path.realpath``, which stops resolving links once a path exceeds PATH_MAX, so a
chain of links can make them approve a member that the kernel then writes outside the
target (CVE-2025-4517 and its kin). Here every target is decided lexically, links are
resolved against the links this unpack itself made, and nothing on disk is followed
while writing: each directory is opened with ``O_NOFOLLOW`` relative to its parent's
descriptor, and each file is created with ``O_EXCL | O_NOFOLLOW``.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from modelhall.bundle import mediatypes as mt

if TYPE_CHECKING:
    from modelhall.settings import Settings

DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_MEMBERS = 100_000
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 64
MAX_LINK_HOPS = 40  # as the kernel's own limit on links followed in one lookup
CHUNK_BYTES = 1024 * 1024
SHOWN_NAME_CHARS = 100

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class IteratorReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (a blob streamed from a store)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class UnsafeArchiveError(ValueError):
    """An archive or layer that would write outside its target or past its limits."""


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_settings(cls, settings: Settings) -> UnpackLimits:
        """The limits an operator set (``MODELHALL_UNPACK_MAX_BYTES`` and ``..._MAX_MEMBERS``)."""
        return cls(max_bytes=settings.unpack_max_bytes, max_members=settings.unpack_max_members)


def _shown(name: str) -> str:
    """A member name fit for an error message: quoted, and cut short if it is long."""
    return repr(name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "...")


def _refuse(name: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{_shown(name)} {reason}")


def _components(path: str) -> tuple[str, ...]:
    """A POSIX path's parts as the kernel reads them: empty and ``.`` parts are no parts."""
    return tuple(part for part in path.split("/") if part not in ("", "."))


def member_parts(name: str) -> tuple[str, ...]:
    """``name`` as the parts of a relative path inside the target, or an error saying why not.

    Decided on the name alone. An empty result is the target itself (``./``).
    """
    if "\0" in name:
        raise _refuse(name, "contains a NUL character")
    if name.startswith(("/", "\\")):
        raise _refuse(name, "is an absolute path")
    parts = _components(name)
    if ".." in parts:
        raise _refuse(name, "leaves the target directory through '..'")
    if len(os.fsencode(name)) > MAX_PATH_BYTES:
        raise _refuse(name, f"is longer than {MAX_PATH_BYTES} bytes")
    if any(len(os.fsencode(part)) > MAX_COMPONENT_BYTES for part in parts):
        raise _refuse(name, f"has a part longer than {MAX_COMPONENT_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise _refuse(name, f"is nested more than {MAX_DEPTH} directories deep")
    return parts


ARCHIVE_READ_ERRORS = (tarfile.ReadError, gzip.BadGzipFile, EOFError, zlib.error)


@contextmanager
def open_tar_gz_stream(stream: BinaryIO) -> Iterator[tarfile.TarFile]:
    """Read a tar+gzip stream front to back, without seeking.

    gzip is undone by :mod:`gzip` rather than tarfile's ``r|gz``, whose header parser
    fails on a truncated stream with a TypeError instead of a read error.
    Errors while reading are one of :data:`ARCHIVE_READ_ERRORS`.
    """
    with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped, tarfile.open(fileobj=unzipped, mode="r|") as archive:
        yield archive


@contextmanager
def _directory_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


class _Unpacking:
    """One unpack into one directory: its budget, the entries it made, and its links.

    Every layer of a bundle goes through the same instance, so limits, duplicates and
    links are judged across the whole bundle.
    """

    def __init__(self, root_fd: int, limits: UnpackLimits):
        self.root_fd = root_fd
        self.limits = limits
        self.members = 0
        self.declared_bytes = 0
        self.written_bytes = 0
        self.seen: set[tuple[str, ...]] = set()
        self.links: dict[tuple[str, ...], str] = {}  # where each symlink is -> its target as written

    @classmethod
    @contextmanager
    def into(cls, target: Path, limits: UnpackLimits) -> Iterator[_Unpacking]:
        with _directory_fd(target) as root_fd:
            yield cls(root_fd, limits)

    # --- what goes in -------------------------------------------------------------------

    def extract_tar(self, stream: BinaryIO) -> None:
        try:
            with open_tar_gz_stream(stream) as archive:
                for member in archive:
                    self._extract_member(archive, member)
        except ARCHIVE_READ_ERRORS as error:
            raise UnsafeArchiveError(f"not a readable tar archive: {error}") from None
        self._check_links()

    def write_file(self, name: str, declared_size: int, stream: BinaryIO) -> None:
        """A raw layer: ``stream``'s bytes as the file ``name``."""
        parts = self._admit(name, declared_size)
        if not parts:
            raise _refuse(name, "is not a file name")
        self._write(name, parts, stream, 0o644)

    def _extract_member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = self._admit(name, member.size)
        if member.isdir():
            self._make_directories(name, parts)
            return
        if not parts:
            raise _refuse(name, "is not a file name")
        if member.isreg():
            data = cast(BinaryIO, archive.extractfile(member))  # never None for a regular member
            self._write(name, parts, data, 0o755 if member.mode & 0o100 else 0o644)
        elif member.issym():
            self._make_symlink(name, parts, member.linkname)
        elif member.islnk():
            self._resolve(name, (), member.linkname)
            raise _refuse(name, "is a hard link: hard links are refused")
        else:
            raise _refuse(name, "is a device file, pipe or other special file: special files are refused")

    def _admit(self, name: str, declared_size: int) -> tuple[str, ...]:
        """The member's path, once it is known to be new and within the limits."""
        parts = member_parts(name)
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeArchiveError(f"more than {self.limits.max_members} entries (at {_shown(name)})")
        self.declared_bytes += max(declared_size, 0)
        if self.declared_bytes > self.limits.max_bytes:
            raise self._too_big(name)
        if parts and parts in self.seen:
            raise _refuse(name, "appears twice: duplicate entries are refused")
        self.seen.add(parts)
        for depth in range(1, len(parts)):
            if parts[:depth] in self.links:
                raise _refuse(name, f"would be written through the link {_shown('/'.join(parts[:depth]))}")
        return parts

    def _too_big(self, name: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"expands past the limit of {self.limits.max_bytes} bytes (at {_shown(name)})")

    # --- links --------------------------------------------------------------------------

    def _make_symlink(self, name: str, parts: tuple[str, ...], target: str) -> None:
        if not target:
            raise _refuse(name, "is a link with no target")
        self._resolve(name, parts[:-1], target)
        parent = self._open_parent(name, parts)
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except FileExistsError:
            raise _refuse(name, "collides with an entry made earlier") from None
        finally:
            os.close(parent)
        self.links[parts] = target

    def _resolve(self, name: str, directory: tuple[str, ...], target: str) -> tuple[str, ...]:
        """Where ``target``, read from ``directory``, leads inside the target directory.

        Resolved as the kernel would, but on paper: through the links this unpack made,
        never through the disk, so no path length or race changes the answer.
        """
        if "\0" in target or len(os.fsencode(target)) > MAX_PATH_BYTES:
            raise _refuse(name, "is a link with an invalid target")
        if target.startswith("/"):
            raise _refuse(name, "is a link to an absolute path, which points outside the target directory")
        resolved = list(directory)
        pending = list(reversed(_components(target)))
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if not resolved:
                    raise _refuse(name, "is a link that points outside the target directory")
                resolved.pop()
                continue
            resolved.append(part)
            link = self.links.get(tuple(resolved))
            if link is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _refuse(name, f"is a link in a loop or a chain of more than {MAX_LINK_HOPS} links")
                resolved.pop()
                pending.extend(reversed(_components(link)))
        return tuple(resolved)

    def _check_links(self) -> None:
        """Judge every link again against all links made: a later link changes where an earlier one leads."""
        for parts, target in self.links.items():
            self._resolve("/".join(parts), parts[:-1], target)

    # --- the disk -----------------------------------------------------------------------

    def _write(self, name: str, parts: tuple[str, ...], data: BinaryIO, mode: int) -> None:
        parent = self._open_parent(name, parts)
        try:
            fd = os.open(parts[-1], NEW_FILE_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            raise _refuse(name, "collides with an entry made earlier") from None
        finally:
            os.close(parent)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, mode)
            while chunk := data.read(CHUNK_BYTES):
                self.written_bytes += len(chunk)
                if self.written_bytes > self.limits.max_bytes:
                    raise self._too_big(name)
                out.write(chunk)

    def _make_directories(self, name: str, parts: tuple[str, ...]) -> None:
        os.close(self._open_directories(name, parts))

    def _open_parent(self, name: str, parts: tuple[str, ...]) -> int:
        return self._open_directories(name, parts[:-1])

    def _open_directories(self, name: str, parts: tuple[str, ...]) -> int:
        """A descriptor of the directory ``parts``, made where missing, walked one part at a time.

        Each part is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so
        a link on disk, however it got there, is refused rather than followed.
        """
        fd = os.dup(self.root_fd)
        for part in parts:
            try:
                fd = _enter(fd, part)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(name, f"would be written through {_shown(part)}, which is a link or a file") from None
                raise
        return fd


def _enter(parent: int, part: str) -> int:
    """The subdirectory ``part`` of ``parent``, made if missing; ``parent`` is closed."""
    try:
        try:
            os.mkdir(part, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        return os.open(part, DIRECTORY_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)


def extract_tar(stream: BinaryIO, target: Path, limits: UnpackLimits = UnpackLimits()) -> None:
    """Extract a tar+gzip stream into the existing directory ``target``."""
    with _Unpacking.into(target, limits) as unpacking:
        unpacking.extract_tar(stream)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A temp dir beside ``target`` that becomes ``target`` only if the block succeeds."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()
    staging.rename(target)


def unpack_layers(manifest: dict[str, Any], open_blob: Callable[[str], BinaryIO], target: Path,
                  limits: UnpackLimits = UnpackLimits()) -> None:
    """Lay out a bundle's layers in ``target``.

    Understands Modelhall bundles (a code tar plus raw weights files) and artifacts
    pushed by plain ``oras push`` (raw files titled with their path, and directories
    as tar+gzip layers marked for unpacking).
    """
    with staged_directory(target) as staging, _Unpacking.into(staging, limits) as unpacking:
        for layer in manifest.get("layers", []):
            annotations = layer.get("annotations") or {}
            with open_blob(layer["digest"]) as stream:
                if mt.is_folder_archive(layer):
                    unpacking.extract_tar(stream)
                elif mt.ANNOTATION_TITLE in annotations:
                    unpacking.write_file(annotations[mt.ANNOTATION_TITLE], layer.get("size", 0), stream)
