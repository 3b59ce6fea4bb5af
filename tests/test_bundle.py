"""Packing is deterministic; unpacking refuses hostile archives and leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from modelhall.bundle import PackError, UnpackLimits, UnsafeArchiveError, extract_tar, pack_bundle, unpack_layers
from modelhall.bundle import mediatypes as mt
from modelhall.bundle.digests import digest_bytes

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "hello"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(TEMPLATE, target)
    return target


def manifest_of(directory: Path) -> dict:
    with pack_bundle(directory) as packed:
        return json.loads(packed.manifest)


def test_same_directory_same_digest(bundle: Path) -> None:
    with pack_bundle(bundle) as first, pack_bundle(bundle) as second:
        assert first.digest == second.digest
        assert first.manifest == second.manifest


def test_copy_with_other_mtimes_same_digest_under_source_date_epoch(bundle: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy, copy_function=shutil.copy)  # new mtimes
    os.utime(copy / "predict.py", (1, 1))
    assert manifest_of(bundle) == manifest_of(copy)
    assert manifest_of(copy)["annotations"][mt.ANNOTATION_CREATED] == "2023-11-14T22:13:20Z"


def test_changed_content_changes_digest(bundle: Path) -> None:
    before = manifest_of(bundle)
    (bundle / "predict.py").write_text("def predict(name, style='plain'):\n    return name\n")
    after = manifest_of(bundle)
    assert before["layers"][0]["digest"] != after["layers"][0]["digest"]
    assert before["layers"][1] == after["layers"][1]  # unchanged weights: the same layer


def test_manifest_shape(bundle: Path) -> None:
    manifest = manifest_of(bundle)
    assert manifest["artifactType"] == mt.BUNDLE_ARTIFACT_TYPE
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == mt.SPEC_MEDIA_TYPE
    code, weights = manifest["layers"]
    assert code["mediaType"] == mt.CODE_MEDIA_TYPE
    assert weights["annotations"][mt.ANNOTATION_TITLE] == "weights/greetings.json"
    assert weights["digest"] == digest_bytes((bundle / "weights" / "greetings.json").read_bytes())
    annotations = manifest["annotations"]
    assert annotations[mt.ANNOTATION_VERSION] == "0.1.0"
    assert annotations[mt.ANNOTATION_DESCRIPTION].startswith("Greets")


def test_ignore_file_and_weights_stay_out_of_the_code_layer(bundle: Path) -> None:
    (bundle / "secrets.env").write_text("TOKEN=x")
    (bundle / "data").mkdir()
    (bundle / "data" / "train.csv").write_text("1,2")
    (bundle / ".modelhallignore").write_text("*.env\ndata/\n")
    with pack_bundle(bundle) as packed:
        with tarfile.open(packed.layers[0].path) as code:
            names = code.getnames()
            members = code.getmembers()
    assert "secrets.env" not in names and "data/train.csv" not in names
    assert "weights/greetings.json" not in names
    assert {"modelhall.yaml", "predict.py", "README.md"} <= set(names)
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}


def test_link_out_of_the_bundle_is_refused(bundle: Path) -> None:
    (bundle / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(PackError, match="passwd is a link to /etc/passwd, outside the bundle"):
        with pack_bundle(bundle):
            pass


def test_pack_then_unpack_restores_the_files(bundle: Path, tmp_path: Path) -> None:
    with pack_bundle(bundle) as packed:
        blobs = {blob.digest: blob for blob in packed.blobs}
        unpack_layers(json.loads(packed.manifest), lambda digest: blobs[digest].open(), tmp_path / "out")
    for name in ("modelhall.yaml", "predict.py", "weights/greetings.json"):
        assert (tmp_path / "out" / name).read_bytes() == (bundle / name).read_bytes()


def tar_with(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


HOSTILE = {
    "dot-dot": (tar_with((entry("../evil.txt"), b"x")), "leaves the target directory through '..'"),
    "nested-dot-dot": (tar_with((entry("ok/../../evil.txt"), b"x")), "leaves the target directory"),
    "absolute": (tar_with((entry("/tmp/evil.txt"), b"x")), "is an absolute path"),
    "symlink-escape": (tar_with((entry("link", tarfile.SYMTYPE, "/etc"), None)), "points outside the target"),
    "relative-symlink-escape": (tar_with((entry("link", tarfile.SYMTYPE, "../../.."), None)),
                                "points outside the target"),
    "hardlink-escape": (tar_with((entry("hard", tarfile.LNKTYPE, "/etc/passwd"), None)), "outside the target"),
    "device": (tar_with((entry("dev", tarfile.CHRTYPE), None)), "special files are refused"),
    "fifo": (tar_with((entry("pipe", tarfile.FIFOTYPE), None)), "special files are refused"),
    "not-a-tar": (io.BytesIO(b"\x1f\x8b\x08garbage"), "not a readable tar archive"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarball_is_refused_and_nothing_is_written(case: str, tmp_path: Path) -> None:
    archive, message = HOSTILE[case]
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    target = workspace / "out"
    manifest = {"layers": [{"mediaType": mt.CODE_MEDIA_TYPE, "digest": "sha256:" + "0" * 64, "size": 1}]}
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_layers(manifest, lambda _digest: archive, target)
    assert list(workspace.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_archive_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    archive = tar_with((entry("a.bin"), b"\0" * 600), (entry("b.bin"), b"\0" * 600))
    with pytest.raises(UnsafeArchiveError, match="expands past the limit of 1000 bytes \\(at 'b.bin'\\)"):
        extract_tar(archive, tmp_path, UnpackLimits(max_bytes=1000))


def test_archive_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    archive = tar_with(*[(entry(f"f{i}"), b"") for i in range(11)])
    with pytest.raises(UnsafeArchiveError, match="more than 10 entries"):
        extract_tar(archive, tmp_path, UnpackLimits(max_members=10))


def test_compression_bomb_is_stopped_by_declared_sizes(tmp_path: Path) -> None:
    """A gzip that is tiny on the wire but expands to 50 MB is refused before it is written."""
    archive = tar_with((entry("zeros.bin"), b"\0" * 50_000_000))
    assert len(archive.getvalue()) < 100_000
    with pytest.raises(UnsafeArchiveError, match="expands past the limit"):
        extract_tar(archive, tmp_path, UnpackLimits(max_bytes=10_000_000))
    assert not (tmp_path / "zeros.bin").exists()


@pytest.mark.parametrize(("title", "message"), [("../outside", "'..'"), ("/etc/cron.d/x", "absolute path")])
def test_raw_layer_titles_cannot_escape(title: str, message: str, tmp_path: Path) -> None:
    manifest = {"layers": [{"mediaType": "application/octet-stream", "digest": "sha256:" + "0" * 64, "size": 1,
                            "annotations": {mt.ANNOTATION_TITLE: title}}]}
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_layers(manifest, lambda _d: io.BytesIO(b"x"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unpack_refuses_a_non_empty_target(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        unpack_layers({"layers": []}, lambda _d: io.BytesIO(), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
