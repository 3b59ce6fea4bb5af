"""Fixtures that start the real registry (as its own process) on SQLite and on PostgreSQL.

Tests talk to it over HTTP like any client would. A test that needs a system tool or
a PostgreSQL server skips with a reason saying what to install; with ``CI=true`` such a
skip is a failure instead, so nothing silently stops being tested.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from itsdangerous import TimestampSigner

from modelhall.registry.auth.tokens import create_access_token
from sqlalchemy import Engine, select

from modelhall.registry.db.models import Repository, Run, User
from modelhall.registry.db.session import make_engine, make_session_factory
from modelhall.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("MODELHALL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"
MODELHALL = [sys.executable, "-m", "modelhall"]


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true turns this skip into a failure)")
    pytest.skip(reason)


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed: {install_hint}")
    return path  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class RegistryServer:
    """A ``modelhall up`` process with its own data dir and database."""

    data_dir: Path
    database: str | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    demo_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def demo_url(self) -> str:
        """The demos' own origin, as ``modelhall up`` makes it: the loopback address's other name."""
        return f"http://localhost:{self.demo_port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "MODELHALL_DATA_DIR": str(self.data_dir), "MODELHALL_URL": self.url,
               "MODELHALL_DEMO_URL": self.demo_url, **self.extra_env}
        if self.database:
            env["MODELHALL_DATABASE"] = self.database
        return env

    def start(self) -> None:
        log = (self.data_dir.parent / f"registry-{self.port}.log").open("ab")
        command = [*MODELHALL, "up", "--port", str(self.port), "--demo-port", str(self.demo_port)]
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180  # a loaded CI machine (the Kubernetes client's import alone takes seconds)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the registry exited with {self.process.returncode}; see {log.name}")
            try:
                httpx.get(f"{self.url}/v2/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.crash()  # not left running behind a failed fixture
        raise RuntimeError("the registry did not answer within 180 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    def crash(self) -> None:
        """Kill the registry without letting it clean up, as a power cut would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)

    def admin(self, *args: str) -> str:
        result = subprocess.run([*MODELHALL, "admin", *args], env=self.env, capture_output=True, text=True, check=True)
        return result.stdout.strip()

    def engine(self) -> Engine:
        settings = Settings(data_dir=self.data_dir, database=self.database)
        return make_engine(settings.database_url)

    def queue_run(self, repository: str, digest: str, inputs: dict) -> str:
        """Put an async run in the queue straight into the database, as a registry that stopped would leave it."""
        engine = self.engine()
        try:
            with make_session_factory(engine)() as db:
                repository_id = db.scalar(select(Repository.id).where(Repository.name == repository))
                run = Run(id=str(uuid.uuid4()), repository_id=repository_id, digest=digest, source="async",
                          status="queued", inputs=inputs)
                db.add(run)
                db.commit()
                return run.id
        finally:
            engine.dispose()

    def user_id(self, name: str) -> int:
        engine = self.engine()
        try:
            with make_session_factory(engine)() as db:
                user_id = db.scalar(select(User.id).where(User.name == name))
        finally:
            engine.dispose()
        assert user_id is not None, f"no user {name}"
        return user_id

    @property
    def signing_key(self) -> str:
        return (self.data_dir / "secret.key").read_text().strip()

    def session_cookie(self, name: str) -> str:
        """The registry's session cookie for user ``name``, as its login would set it (signed with its key)."""
        session = base64.b64encode(json.dumps({"user_id": self.user_id(name)}).encode())
        return TimestampSigner(self.signing_key).sign(session).decode()

    def user(self, scope: str = "write", name: str | None = None) -> tuple[str, str]:
        """A new user and an access token for it, written straight into the registry's database.

        (`modelhall admin` does the same through the CLI; ``test_cli`` covers that path.)
        """
        name = name or unique("u")
        engine = self.engine()
        try:
            with make_session_factory(engine)() as db:
                user = User(name=name)
                db.add(user)
                db.flush()
                token = create_access_token(db, user, {scope})
                db.commit()
        finally:
            engine.dispose()
        return name, token


def _postgres_database() -> Iterator[str]:
    name = unique("modelhall_test_")
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        unavailable(f"no PostgreSQL at {POSTGRES_ADMIN_URL} ({error}); install and start postgresql, "
                    "or set MODELHALL_TEST_POSTGRES")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def registry(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One registry per database kind for the whole session; tests use unique repository names."""
    yield from _serve(database_kind, tmp_path_factory.mktemp("registry"))


@pytest.fixture
def fresh_registry(database_kind: str, tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry of the test's own, for tests that restart it."""
    yield from _serve(database_kind, tmp_path / "registry")


def serve_registry(kind: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[RegistryServer]:
    """A registry process for a test's own use (``extra_env`` adds settings)."""
    yield from _serve(kind, data_dir, extra_env)


def _serve(kind: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[RegistryServer]:
    databases = _postgres_database() if kind == "postgresql" else iter([None])
    for database in databases:
        server = RegistryServer(data_dir=data_dir, database=database, extra_env=extra_env or {})
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def isolated_client_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the CLI's credentials and cache inside the test's temp dir."""
    monkeypatch.setenv("MODELHALL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MODELHALL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELHALL_TOKEN", raising=False)


@dataclass
class ModelServer:
    """A ``modelhall serve`` process for one bundle."""

    bundle: Path
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_within: float = 120) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*MODELHALL, "serve", str(self.bundle), "--port", str(self.port)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the model server exited with {self.process.returncode}; see {self.log}")
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=2)
                if health.status_code == 200 and health.json()["demo"] == "ready":  # the API and the demo
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the model server was not ready within {ready_within} s; see {self.log}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def serve_bundle(bundle: Path, log_dir: Path) -> Iterator[ModelServer]:
    server = ModelServer(bundle=bundle, log=log_dir / f"serve-{bundle.name}.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave what a person may want to look at (screenshots)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
