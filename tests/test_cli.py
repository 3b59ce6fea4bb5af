"""The author CLI end to end: accounts, init, validate, push, pull, inspect, resume, verification."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from conftest import MODELHALL, RegistryServer
from modelhall.bundle import pack_bundle
from modelhall.bundle.digests import parse_digest
from modelhall.cli.runs import runs_table
from modelhall.client import transfer
from modelhall.client.credentials import Credentials
from modelhall.client.reference import parse_reference
from modelhall.client.registry import RegistryClient

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "hello"


def cli(registry: RegistryServer, *args: str, token: str | None = None, check: bool = True,
        stdin: str | None = None, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**registry.env, "COLUMNS": str(columns)}
    if token:
        env["MODELHALL_TOKEN"] = token
    result = subprocess.run([*MODELHALL, *args], env=env, capture_output=True, text=True, input=stdin, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_admin_prints_only_the_token(registry: RegistryServer) -> None:
    cli(registry, "admin", "create-user", "dana-cli")
    token = cli(registry, "admin", "create-token", "dana-cli", "--scope", "write").stdout
    assert re.fullmatch(r"mh_[A-Za-z0-9_-]{40,}\n", token)
    taken = cli(registry, "admin", "create-user", "dana-cli", check=False)
    assert (taken.returncode, taken.stderr.strip()) == (1, "Error: the name 'dana-cli' is taken")
    bad_scope = cli(registry, "admin", "create-token", "dana-cli", "--scope", "root", check=False)
    assert "unknown scope 'root'; use one of read, deploy, write, admin" in bad_scope.stderr


def test_login_saves_credentials_readable_by_owner_only(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    result = cli(registry, "login", "--token-stdin", stdin=token + "\n")
    assert f"Logged in to {registry.host} as {user}" in result.stdout
    saved = Path(os.environ["MODELHALL_CONFIG_DIR"]) / "credentials.json"
    assert json.loads(saved.read_text()) == {registry.host: {"username": user, "token": token}}
    assert saved.stat().st_mode & 0o777 == 0o600
    refused = cli(registry, "login", "--token", "mh_wrong", check=False)
    assert refused.returncode == 1
    assert "Not logged in, or the token is wrong" in refused.stderr


def test_init_then_validate(registry: RegistryServer, tmp_path: Path) -> None:
    cli(registry, "init", str(tmp_path / "my-model"), "--template", "hello")
    assert "valid my-model 0.1.0 (python adapter)" in cli(registry, "validate", str(tmp_path / "my-model")).stdout
    assert (tmp_path / "my-model" / "modelhall.yaml").read_text().startswith("# A minimal bundle")  # comments kept
    again = cli(registry, "init", str(tmp_path / "my-model"), check=False)
    assert again.returncode == 1 and "exists already" in again.stderr
    cli(registry, "init", str(tmp_path / "Other Folder"), "--template", "image-to-image", "--name", "snowy")
    assert "valid snowy " in cli(registry, "validate", str(tmp_path / "Other Folder")).stdout
    unnamed = cli(registry, "init", str(tmp_path / "Bad Name"), check=False)
    assert unnamed.returncode == 1 and "pass one with --name" in unnamed.stderr
    assert not (tmp_path / "Bad Name").exists()


def test_validate_names_the_field_without_a_traceback(registry: RegistryServer, tmp_path: Path) -> None:
    (tmp_path / "modelhall.yaml").write_text("name: x\nruntime: {adapter: python, entrypoint: p.py:f}\n"
                                             "outputs:\n  - {name: y, type: hologram}\n")
    result = cli(registry, "validate", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "modelhall.yaml:4: outputs[0].type: 'hologram' is not one of text, number" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_pull_round_trip_and_skip_existing(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    first = cli(registry, "push", str(TEMPLATE), f"{user}/hello:v1", token=token)
    assert "3 blobs uploaded, 0 already there" in first.stdout
    second = cli(registry, "push", str(TEMPLATE), f"{user}/hello:v2", token=token)
    assert "0 blobs uploaded, 3 already there" in second.stdout
    cli(registry, "pull", f"{user}/hello:v1", str(tmp_path / "out"), token=token)
    assert files_in(tmp_path / "out") == files_in(TEMPLATE)
    inspected = cli(registry, "inspect", f"{registry.host}/{user}/hello:v2", token=token).stdout
    assert "weights/greetings.json" in inspected and "application/vnd.modelhall.bundle.v1" in inspected
    assert "hello 0.1.0 (python adapter)" in inspected
    [listed] = [v for v in httpx.get(f"{registry.url}/api/v1/repos/{user}/hello/versions",
                                     headers={"Authorization": f"Bearer {token}"}).json() if v["tag"] == "v2"]
    assert f"({listed['size']:,} bytes with the manifest)" in inspected  # one size, the API's and inspect's
    raw = json.loads(cli(registry, "inspect", f"{user}/hello:v1", "--json", token=token).stdout)
    assert raw["artifactType"] == "application/vnd.modelhall.bundle.v1"


def test_push_under_a_new_name_mounts_the_blobs_the_namespace_holds(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    cli(registry, "push", str(TEMPLATE), f"{user}/hello:v1", token=token)
    renamed = cli(registry, "push", str(TEMPLATE), f"{user}/renamed:v1", token=token)
    assert "0 blobs uploaded, 3 already there" in renamed.stdout
    cli(registry, "pull", f"{user}/renamed:v1", str(tmp_path / "out"), token=token)
    assert files_in(tmp_path / "out") == files_in(TEMPLATE)
    other, other_token = registry.user()
    elsewhere = cli(registry, "push", str(TEMPLATE), f"{other}/hello:v1", token=other_token)
    assert "3 blobs uploaded, 0 already there" in elsewhere.stdout  # another namespace's blobs are not found


def test_push_public_then_anonymous_pull(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    cli(registry, "push", str(TEMPLATE), f"{user}/open:v1", "--public", token=token)
    cli(registry, "pull", f"{user}/open:v1", str(tmp_path / "anon"))
    assert (tmp_path / "anon" / "predict.py").exists()


def test_pull_of_a_private_bundle_without_login(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    cli(registry, "push", str(TEMPLATE), f"{user}/closed:v1", token=token)
    result = cli(registry, "pull", f"{user}/closed:v1", str(tmp_path / "out"), check=False)
    assert result.returncode == 1
    assert "NAME_UNKNOWN" in result.stderr
    assert "Check the name and tag, and that you may see this repository." in result.stderr
    assert not (tmp_path / "out").exists()


def test_pull_detects_a_corrupted_blob_and_writes_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    bundle = tmp_path / "bundle"
    shutil.copytree(TEMPLATE, bundle)
    (bundle / "weights" / "greetings.json").write_text('{"plain": "Hi {name}", "excited": "HI {name}"}')
    cli(registry, "push", str(bundle), f"{user}/corrupt:v1", token=token)
    with pack_bundle(bundle) as packed:
        weights_digest = packed.layers[1].digest
    _, hex_ = parse_digest(weights_digest)
    stored = registry.data_dir / "storage" / "blobs" / "sha256" / hex_[:2] / hex_
    stored.write_bytes(stored.read_bytes().replace(b"Hi", b"Yo"))
    result = cli(registry, "pull", f"{user}/corrupt:v1", str(tmp_path / "out"), token=token, check=False)
    assert result.returncode == 1
    assert f"downloaded content of {weights_digest} has digest" in result.stderr
    assert not (tmp_path / "out").exists()


def test_pull_by_digest_checks_the_manifest(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    pushed = cli(registry, "push", str(TEMPLATE), f"{user}/bydigest:v1", token=token).stdout
    digest = re.search(r"sha256:[0-9a-f]{64}", pushed).group(0)  # type: ignore[union-attr]
    cli(registry, "pull", f"{user}/bydigest@{digest}", str(tmp_path / "out"), token=token)
    assert (tmp_path / "out" / "modelhall.yaml").exists()


def test_push_resumes_an_interrupted_upload(registry: RegistryServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload cut off after its first chunk continues from the registry's offset."""
    user, token = registry.user()
    monkeypatch.setattr(transfer, "MONOLITHIC_LIMIT", 1000)
    monkeypatch.setattr("modelhall.client.registry.CHUNK_SIZE", 64 * 1024)
    bundle = tmp_path / "big"
    shutil.copytree(TEMPLATE, bundle)
    weights = os.urandom(300_000)
    (bundle / "weights" / "big.bin").write_bytes(weights)
    reference = parse_reference(f"{user}/big:v1", registry.url)
    client = RegistryClient(registry.url, Credentials(user, token))
    with pack_bundle(bundle) as packed:
        big = next(blob for blob in packed.layers if blob.size == len(weights))
        location = client.start_upload(reference.repository)
        client.http.patch(location, content=weights[:100_000], headers={"Content-Range": "0-99999"})
        key = f"{reference.registry}/{reference.repository}@{big.digest}"
        transfer._UploadSessions().put(key, location)  # what an interrupted push leaves behind
        sent: list[int] = []
        original = client.upload_chunks
        monkeypatch.setattr(client, "upload_chunks",
                            lambda loc, src, offset, advance: sent.append(offset) or original(loc, src, offset, advance))
        transfer.push_bundle(client, reference, packed, Console(quiet=True))
    assert sent == [100_000]  # resumed where the registry stood, in the same session
    assert transfer._UploadSessions().get(key) is None
    blob = httpx.get(f"{registry.url}/v2/{user}/big/blobs/{big.digest}", auth=(user, token))
    assert blob.content == weights


def test_pull_resumes_a_partial_download(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    bundle = tmp_path / "big"
    shutil.copytree(TEMPLATE, bundle)
    weights = os.urandom(500_000)
    (bundle / "weights" / "big.bin").write_bytes(weights)
    cli(registry, "push", str(bundle), f"{user}/partial:v1", token=token)
    with pack_bundle(bundle) as packed:
        digest = next(blob.digest for blob in packed.layers if blob.size == len(weights))
    algorithm, hex_ = parse_digest(digest)
    partial = transfer.cache_dir() / "blobs" / algorithm / f"{hex_}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(weights[:200_000])
    client = RegistryClient(registry.url, Credentials(user, token))
    transfer.pull_bundle(client, parse_reference(f"{user}/partial:v1", registry.url), tmp_path / "out",
                         Console(quiet=True))
    assert (tmp_path / "out" / "weights" / "big.bin").read_bytes() == weights
    assert not partial.exists()


def test_unknown_registry_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "MODELHALL_URL": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "modelhall", "pull", "a/b:v1", str(tmp_path / "x")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Is the registry running? Start it with `modelhall up`" in result.stderr


def test_a_pulled_version_serves_its_demo_with_its_digest(registry: RegistryServer, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from modelhall.showcase.runner import open_runner
    from modelhall.showcase.server import create_server

    user, token = registry.user()
    pushed = cli(registry, "push", str(TEMPLATE), f"{user}/served:v1", token=token).stdout
    digest = re.search(r"sha256:[0-9a-f]{64}", pushed).group(0)  # type: ignore[union-attr]
    cli(registry, "pull", f"{user}/served:v1", str(tmp_path / "pulled"), token=token)
    with TestClient(create_server(open_runner(tmp_path / "pulled", digest=digest, scratch=tmp_path / "scratch"))) as client:
        for _ in range(200):
            if client.get("/healthz").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/predict", json={"inputs": {"name": "Lin"}}).json()
        assert (answer["outputs"], answer["digest"]) == ({"greeting": "Hello, Lin."}, digest)
        assert digest in client.get("/").text or digest in json.dumps(client.get("/config").json())


def test_runs_are_readable_at_80_columns() -> None:
    """Nothing of a run's time, duration or caller is cut at 80 columns; what does not fit wraps."""
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    found = [
        {"created_at": "2026-12-02T11:59:01.5+00:00", "source": "async", "status": "succeeded", "duration_ms": 0.31,
         "cold": True, "caller": "a-rather-long-user-name", "caller_hidden": False,
         "inputs": {"name": "Ada", "style": "excited"}, "outputs": {"greeting": "Hello, Ada!!"}, "error": None},
        {"created_at": "2026-11-30T08:00:00+00:00", "source": "demo", "status": "failed", "duration_ms": 1234.5,
         "cold": False, "caller": None, "caller_hidden": False, "inputs": {"name": "x" * 100}, "outputs": None,
         "error": "name: must be at most 100 characters"},
        {"created_at": "2025-01-05T08:00:00+00:00", "source": "api", "status": "succeeded", "duration_ms": 7.25,
         "cold": None, "caller": "bo", "caller_hidden": True, "inputs": {}, "outputs": {}, "error": None},
    ]
    console = Console(width=80, record=True)
    console.print(runs_table(found, now))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = " ".join(line.strip() for line in lines)
    assert "11:59:01" in text and "11-30 08:00" in text and "2025-01-05" in text
    assert "0.31" in text and "1234" in text and "7.2" in text
    assert "anonymous" in text and "(hidden)" not in text and "bo " in text
    assert "a-rather-long-us" in lines[1] and "er-name" in lines[2]  # wrapped, whole
    assert "greeting=Hello, Ada!!" in text and "error: name: must be at most 100 characters" in text


def test_each_make_demo_revokes_the_token_the_last_one_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelhall.adapters.storage import open_blob_store
    from modelhall.cli.demo import cli_command, demo_credentials
    from modelhall.registry.auth.login_links import spend_login_link
    from modelhall.registry.auth.tokens import InvalidTokenError, find_access_token
    from modelhall.registry.context import RegistryContext
    from modelhall.registry.db.session import make_engine, make_session_factory, migrate
    from modelhall.settings import Settings

    settings = Settings(data_dir=tmp_path, url="http://127.0.0.1:8600")
    engine = make_engine(settings.database_url)
    migrate(engine)
    context = RegistryContext(settings=settings, engine=engine, sessions=make_session_factory(engine),
                              store=open_blob_store(settings.storage_url))
    first, _ = demo_credentials(context)
    second, link = demo_credentials(context)
    with context.sessions() as db:
        with pytest.raises(InvalidTokenError):
            find_access_token(db, first)
        assert find_access_token(db, second).user.name == "demo"
        assert link.startswith("http://127.0.0.1:8600/auth/link?token=mhl_")
        assert spend_login_link(db, link.partition("token=")[2]) is not None
    engine.dispose()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # modelhall not on PATH, as after `make demo`
    printed = cli_command()
    assert printed != "modelhall" and os.access(printed, os.X_OK)  # runs as printed
