"""Packing is deterministic; unpacking refuses hostile archives and leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MODELHALL, RegistryServer, serve_registry
from modelhall.bundle import PackError, UnpackLimits, UnsafeArchiveError, extract_tar, pack_bundle, unpack_layers
from modelhall.bundle import mediatypes as mt
from modelhall.bundle.digests import digest_bytes
from modelhall.settings import load_settings
from oci_helpers import http, push_packed

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


def code_layer_manifest() -> dict:
    return {"layers": [{"mediaType": mt.CODE_MEDIA_TYPE, "digest": "sha256:" + "0" * 64, "size": 1}]}


def symlink_chain_past_path_max(component: str, victim: str) -> io.BytesIO:
    """The CVE-2025-4517 reproduction: links whose resolved path is longer than PATH_MAX.

    ``a`` -> ``ddd…``, ``ddd…/b`` -> ``ddd…`` and so on, 16 deep, then a link ``l…``
    at the end of the short path ``a/b/…/p``, pointing back up 16 levels. Resolving
    ``a/b/…/p/l…`` on disk takes more than 4096 characters, so ``os.path.realpath``
    gives up following links there and goes on lexically: tarfile's filters think
    ``escape`` (``…/l…/../../victim``) stays inside, while the kernel follows ``l…``
    and lands two levels above the target, where ``escape/pwned`` is then written.
    """
    steps = "abcdefghijklmnop"
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    path = ""
    for step in steps:
        members.append((entry(os.path.join(path, component), tarfile.DIRTYPE), None))
        members.append((entry(os.path.join(path, step), tarfile.SYMTYPE, component), None))
        path = os.path.join(path, component)
    long_link = os.path.join(*steps, "l" * 254)
    members.append((entry(long_link, tarfile.SYMTYPE, "../" * len(steps)), None))
    members.append((entry("escape", tarfile.SYMTYPE, f"{long_link}/../../{victim}"), None))
    members.append((entry("escape/pwned"), b"written outside the bundle"))
    return tar_with(*members)


@pytest.mark.parametrize(("component", "message"), [
    ("d" * 247, "is longer than 1024 bytes"),  # the published exploit: past PATH_MAX once resolved
    ("d" * 40, "would be written through the link 'a'"),  # short enough for the name rules: the link rules decide
], ids=["past-path-max", "within-name-limits"])
def test_symlink_chain_past_path_max_writes_nothing_outside(component: str, message: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_layers(code_layer_manifest(), lambda _d: symlink_chain_past_path_max(component, "victim"),
                      workspace / "out")
    assert list(victim.iterdir()) == []
    assert list(workspace.iterdir()) == []


def data_entry(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return entry(name), data


def link_entry(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    return entry(name, kind, target), None


LINK_CASES = {
    "symlink-to-absolute-file": ([link_entry("passwd", "/etc/passwd")], "is a link to an absolute path"),
    "symlink-escaping-by-dot-dot": ([link_entry("sub/up", "../../outside")], "points outside the target"),
    "file-through-a-link": ([data_entry("real/keep.txt"), link_entry("docs", "real"), data_entry("docs/evil.txt")],
                            "'docs/evil.txt' would be written through the link 'docs'"),
    "directory-through-a-link": ([link_entry("docs", "."), (entry("docs/sub", tarfile.DIRTYPE), None)],
                                 "would be written through the link 'docs'"),
    "chain-escaping-through-an-earlier-link": ([link_entry("here", "."), link_entry("up", "here/..")],
                                               "'up' is a link that points outside the target"),
    "chain-escaping-through-a-later-link": ([link_entry("up", "here/.."), link_entry("here", ".")],
                                            "'up' is a link that points outside the target"),
    "link-loop": ([link_entry("a", "b"), link_entry("b", "a")], "a loop or a chain of more than 40 links"),
    "hard-link-inside": ([data_entry("f"), link_entry("h", "f", tarfile.LNKTYPE)], "'h' is a hard link"),
    "block-device": ([(entry("disk", tarfile.BLKTYPE), None)], "special files are refused"),
    "duplicate-file": ([data_entry("a.txt", b"first"), data_entry("a.txt", b"second")], "'a.txt' appears twice"),
    "duplicate-after-normalising": ([data_entry("a/b.txt"), data_entry("./a//b.txt")], "appears twice"),
    "file-over-a-directory": ([data_entry("a/b.txt"), data_entry("a")], "collides with an entry made earlier"),
    "too-deep": ([data_entry("/".join(["d"] * 65))], "nested more than 64 directories deep"),
}


@pytest.mark.parametrize("case", sorted(LINK_CASES))
def test_links_specials_and_duplicates_are_refused_and_nothing_is_written(case: str, tmp_path: Path) -> None:
    members, message = LINK_CASES[case]
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_layers(code_layer_manifest(), lambda _d: tar_with(*members), workspace / "out")
    assert list(workspace.iterdir()) == []


def test_links_inside_the_bundle_are_kept(tmp_path: Path) -> None:
    archive = tar_with(data_entry("lib/real.py", b"x = 1\n"), link_entry("lib/alias.py", "real.py"),
                       link_entry("top", "lib/../lib"), (entry("./", tarfile.DIRTYPE), None))
    unpack_layers(code_layer_manifest(), lambda _d: archive, tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "lib" / "alias.py") == "real.py"
    assert (tmp_path / "out" / "top" / "real.py").read_bytes() == b"x = 1\n"


def test_a_link_already_on_disk_is_not_followed(tmp_path: Path) -> None:
    """Whatever put a link in the target, writing refuses to go through it (O_NOFOLLOW)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    with pytest.raises(UnsafeArchiveError, match="'sub/evil.txt' would be written through 'sub', which is a link"):
        extract_tar(tar_with(data_entry("sub/evil.txt")), target)
    assert list(outside.iterdir()) == []


def test_a_raw_layer_past_the_limit_by_its_bytes_is_refused(tmp_path: Path) -> None:
    """The manifest says 1 byte; the blob holds 5000: what is written counts, not what was declared."""
    secret = b"SECRET-WEIGHTS " * 400
    manifest = {"layers": [{"mediaType": "application/octet-stream", "digest": "sha256:" + "0" * 64, "size": 1,
                            "annotations": {mt.ANNOTATION_TITLE: "weights/big.bin"}}]}
    with pytest.raises(UnsafeArchiveError) as refused:
        unpack_layers(manifest, lambda _d: io.BytesIO(secret), tmp_path / "out", UnpackLimits(max_bytes=1000))
    assert str(refused.value) == "expands past the limit of 1000 bytes (at 'weights/big.bin')"
    assert list(tmp_path.iterdir()) == []


def test_a_raw_layer_named_like_a_tar_member_is_a_duplicate(tmp_path: Path) -> None:
    manifest = {"layers": [
        {"mediaType": mt.CODE_MEDIA_TYPE, "digest": "sha256:" + "1" * 64, "size": 1},
        {"mediaType": "application/octet-stream", "digest": "sha256:" + "2" * 64, "size": 1,
         "annotations": {mt.ANNOTATION_TITLE: "predict.py"}}]}
    blobs = {"sha256:" + "1" * 64: tar_with(data_entry("predict.py")), "sha256:" + "2" * 64: io.BytesIO(b"y")}
    with pytest.raises(UnsafeArchiveError, match="'predict.py' appears twice"):
        unpack_layers(manifest, blobs.__getitem__, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "message"), [
    ("a\0b", "contains a NUL character"),
    ("x" * 256, "has a part longer than 255 bytes"),
    ("/".join(["x" * 200] * 6), "is longer than 1024 bytes"),
    ("", "is not a file name"),
])
def test_names_are_judged_before_anything_is_written(name: str, message: str, tmp_path: Path) -> None:
    manifest = {"layers": [{"mediaType": "application/octet-stream", "digest": "sha256:" + "0" * 64, "size": 1,
                            "annotations": {mt.ANNOTATION_TITLE: name}}]}
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_layers(manifest, lambda _d: io.BytesIO(b"x"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHALL_UNPACK_MAX_BYTES", "1234")
    monkeypatch.setenv("MODELHALL_UNPACK_MAX_MEMBERS", "56")
    assert UnpackLimits.from_settings(load_settings()) == UnpackLimits(max_bytes=1234, max_members=56)


UNPACK_LIMIT = 4096


@pytest.fixture(scope="module")
def limited_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from serve_registry("sqlite", tmp_path_factory.mktemp("limited") / "registry",
                              {"MODELHALL_UNPACK_MAX_BYTES": str(UNPACK_LIMIT)})


def push_big_bundle(registry: RegistryServer, bundle: Path) -> tuple[str, str]:
    """The hello bundle with weights past the limit; the weights are a marker no error may quote."""
    (bundle / "weights" / "big.bin").write_bytes(b"SECRET-WEIGHTS " * 1000)
    user, token = registry.user()
    with pack_bundle(bundle) as packed:
        push_packed(http(registry.url, token), f"{user}/big", "latest", packed)
    return user, token


def test_the_registry_honours_the_unpack_limit(limited_registry: RegistryServer, bundle: Path) -> None:
    user, token = push_big_bundle(limited_registry, bundle)
    response = http(limited_registry.url, token).post(f"/api/v1/repos/{user}/big/predict",
                                                      json={"inputs": {"name": "x"}}, timeout=60)
    assert response.status_code == 502
    detail = response.json()["detail"]
    assert f"build failed: expands past the limit of {UNPACK_LIMIT} bytes (at 'weights/big.bin')" in detail
    assert "SECRET" not in response.text


def test_the_cli_pull_honours_the_unpack_limit(limited_registry: RegistryServer, bundle: Path,
                                               tmp_path: Path) -> None:
    user, token = push_big_bundle(limited_registry, bundle)
    env = {**limited_registry.env, "MODELHALL_TOKEN": token, "MODELHALL_UNPACK_MAX_BYTES": str(UNPACK_LIMIT)}
    result = subprocess.run([*MODELHALL, "pull", f"{user}/big:latest", str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"expands past the limit of {UNPACK_LIMIT} bytes (at 'weights/big.bin')" in result.stderr
    assert "SECRET" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()
