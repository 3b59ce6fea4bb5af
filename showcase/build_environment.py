"""An environment build Job's entry, in the model-server image: ``python -m modelhall.showcase.build_environment``.

A cluster runtime (``adapters/runtimes/kubernetes.py``) starts one Job per requirements key, in a pod
as hardened and fenced as a model's. It asks uv what the requirements add to the image's own
environment (so only what is missing is installed, and nothing the platform imports is shadowed),
installs exactly that into a folder, packs it as one deterministic tar+gzip layer, and pushes it to the version's repository as
an environment artifact (by digest, annotated with the key) with the environment push token, which
can push that and nothing else. Its last line names the artifact's digest. A model pod fetches the
artifact by digest and puts the layer on its ``PYTHONPATH`` (``bootstrap.py``): a pod start is a
download, not an install. The requirements were checked by the registry (no local paths, no
options); the installer's own code, and the build backends it runs, are the author's.

Environment:

- ``MODELHALL_REQUIREMENTS``: the requirement lines, one per line
- ``MODELHALL_ENVIRONMENT_KEY``: the key they were built for
- ``MODELHALL_REGISTRY_URL``, ``MODELHALL_REPOSITORY``: where the artifact goes
- ``MODELHALL_PUSH_TOKEN``: the environment push token (from the Job's Secret)
- ``UV_*``: the operator's package index settings
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from modelhall.bundle import mediatypes as mt
from modelhall.bundle.digests import digest_bytes, digest_file
from modelhall.bundle.pack import write_code_layer
from modelhall.client.errors import raise_for_response
from modelhall.client.registry import RegistryClient

PRIVATE = ("MODELHALL_PUSH_TOKEN",)
PLANNED = re.compile(r"^ ([+-]) ([A-Za-z0-9][A-Za-z0-9._-]*)(==\S+| @ \S+)$")  # uv's " + name==1.0" lines


def find_uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


class ShadowsTheImage(RuntimeError):
    """The requirements need another version of a package the image has (the platform's own)."""


def plan(requirements: list[str], scratch: Path, environment: dict[str, str]) -> list[str]:
    """What installing ``requirements`` into the image's own environment would add, as exact pins.

    uv resolves against what an environment has only when it installs into that environment; a
    virtualenv or a ``--target`` beside it sees none of the image's packages and would install its
    own copies (httpx, numpy …) that, first on ``PYTHONPATH``, would shadow the platform's. So the
    image's environment (read-only here) is asked with ``--dry-run``, and only what it lacks is built.
    """
    listed = scratch / "requirements.txt"
    listed.write_text("\n".join(requirements) + "\n")
    answer = subprocess.run([find_uv(), "pip", "install", "--dry-run", "--python", sys.executable, "-r", str(listed)],
                            env=environment, capture_output=True, text=True, check=False)
    print(answer.stderr + answer.stdout, end="", flush=True)  # the installer's words, in the Job's log
    if answer.returncode != 0:
        raise subprocess.CalledProcessError(answer.returncode, "uv pip install --dry-run")
    changes = [match.groups() for match in map(PLANNED.match, (answer.stderr + answer.stdout).splitlines()) if match]
    replaced = sorted(name for sign, name, _ in changes if sign == "-")
    if replaced:
        raise ShadowsTheImage(f"the requirements need other versions of {', '.join(replaced)} than the "
                              "model-server image has")
    return [f"{name}{pin}" for sign, name, pin in changes if sign == "+"]


def install(pins: list[str], target: Path, scratch: Path, environment: dict[str, str]) -> None:
    """Exactly ``pins``, nothing they depend on (the image has it), into the folder the layer is made of."""
    listed = scratch / "planned.txt"
    listed.write_text("\n".join(pins) + "\n")
    subprocess.run([find_uv(), "pip", "install", "--no-deps", "--python", sys.executable, "--target", str(target),
                    "-r", str(listed)], env=environment, check=True)


def pack(folder: Path, target: Path) -> None:
    """``folder``'s files as a deterministic tar+gzip (no bytecode caches: pods write none)."""
    names = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                   if (path.is_file() or path.is_symlink()) and "__pycache__" not in path.parts
                   and path != folder / ".lock")  # uv's, while it installed
    write_code_layer(folder, names, target)


def artifact(key: str, requirements: list[str], layer: Path) -> tuple[bytes, bytes, dict[str, object]]:
    """The artifact's config, its manifest (as bytes) and the layer's descriptor."""
    config = json.dumps({"key": key, "requirements": requirements,
                         "python": f"{sys.version_info.major}.{sys.version_info.minor}"}, sort_keys=True).encode()
    digest, size = digest_file(layer)
    layer_descriptor: dict[str, object] = {"mediaType": mt.ENVIRONMENT_LAYER_TYPE, "digest": digest, "size": size}
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.ENVIRONMENT_ARTIFACT_TYPE,
                "config": {"mediaType": mt.ENVIRONMENT_CONFIG_TYPE, "digest": digest_bytes(config), "size": len(config)},
                "layers": [layer_descriptor], "annotations": {mt.ANNOTATION_ENVIRONMENT_KEY: key}}
    return config, json.dumps(manifest, sort_keys=True).encode(), layer_descriptor


def push(registry_url: str, repository: str, token: str, config: bytes, manifest: bytes, layer: Path,
         layer_digest: str) -> str:
    """The artifact's blobs, then its manifest by digest: what the token allows, nothing more."""
    with RegistryClient(registry_url, None) as client:
        client.http.headers["Authorization"] = f"Bearer {token}"
        client.upload_monolithic(repository, digest_bytes(config), config)
        with layer.open("rb") as content:
            response = client.http.post(f"/v2/{repository}/blobs/uploads/", params={"digest": layer_digest},
                                        content=content, headers={"Content-Type": "application/octet-stream"})
        raise_for_response(response, f"uploading {layer_digest}")
        return client.put_manifest(repository, digest_bytes(manifest), manifest, mt.OCI_MANIFEST)


def main() -> None:
    environment = os.environ
    requirements = [line for line in environment["MODELHALL_REQUIREMENTS"].splitlines() if line.strip()]
    key = environment["MODELHALL_ENVIRONMENT_KEY"]
    scratch = Path(tempfile.mkdtemp(prefix="environment-", dir=environment.get("TMPDIR")))
    installer = {name: value for name, value in environment.items() if name not in PRIVATE}
    installer["UV_CACHE_DIR"] = str(scratch / "uv-cache")
    packages = scratch / "packages"
    print(f"building environment {key}: {', '.join(requirements)}", flush=True)
    try:
        pins = plan(requirements, scratch, installer)
        print(f"beyond the image: {', '.join(pins) or 'nothing (the image has it all)'}", flush=True)
        packages.mkdir()
        if pins:
            install(pins, packages, scratch, installer)
    except subprocess.CalledProcessError as error:  # the installer said why, above
        sys.exit(f"the installer failed (exit status {error.returncode})")
    except ShadowsTheImage as error:
        sys.exit(str(error))
    layer = scratch / "layer.tar.gz"
    pack(packages, layer)
    config, manifest, described = artifact(key, requirements, layer)
    print(f"pushing {described['size']} bytes", flush=True)  # not where: builds are shared across repositories
    digest = push(environment["MODELHALL_REGISTRY_URL"], environment["MODELHALL_REPOSITORY"],
                  environment["MODELHALL_PUSH_TOKEN"], config, manifest, layer, str(described["digest"]))
    print(f"environment {digest}", flush=True)


if __name__ == "__main__":
    main()
