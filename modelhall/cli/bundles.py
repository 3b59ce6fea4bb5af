"""Author commands: init, validate, schema, push, pull, inspect."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelhall.bundle import UnpackLimits, pack_bundle
from modelhall.bundle import mediatypes as mt
from modelhall.cli.output import console, errors, friendly_errors
from modelhall.client.credentials import load_credentials
from modelhall.client.reference import Reference, parse_reference
from modelhall.client.registry import RegistryClient
from modelhall.client.transfer import fetch_manifest, pull_bundle, push_bundle
from modelhall.settings import load_settings
from modelhall.spec import Spec, load_spec_file
from modelhall.spec.model import NAME_PATTERN
from modelhall.templates import template_names, template_path


def _client_for(text: str) -> tuple[RegistryClient, Reference]:
    reference = parse_reference(text, load_settings().url)
    return RegistryClient(reference.registry, load_credentials(reference.host)), reference


def _describe(spec: Spec) -> str:
    inputs = ", ".join(f"{f.name}:{f.type}" for f in spec.inputs) or "none"
    outputs = ", ".join(f"{f.name}:{f.type}" for f in spec.outputs) or "none"
    return f"{spec.name} {spec.version} ({spec.runtime.adapter} adapter) — inputs {inputs}; outputs {outputs}"


@friendly_errors
def init(directory: Annotated[Path, typer.Argument(help="where to create the bundle")] = Path("."),
         template: Annotated[str, typer.Option("--template", "-t", help="starter bundle to copy")] = "hello",
         name: Annotated[str | None, typer.Option(help="the bundle's name (default: the folder's)")] = None) -> None:
    """Create a bundle from a starter template, named after its folder or --name."""
    if template not in template_names():
        errors.print(f"Error: no template {template!r}; choose one of {', '.join(template_names())}")
        raise typer.Exit(1)
    name = name or directory.resolve().name.lower()
    if not re.fullmatch(NAME_PATTERN, name):
        errors.print(f"Error: {name!r} is not a bundle name (lower-case letters, digits and . _ - between them); "
                     "pass one with --name")
        raise typer.Exit(1)
    if (directory / "modelhall.yaml").exists():
        raise FileExistsError(f"{directory / 'modelhall.yaml'} exists already; init will not overwrite it")
    shutil.copytree(template_path(template), directory, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    _rename(directory / "modelhall.yaml", name)
    console.print(f"Created the bundle {name!r} from the {template} template in {directory}. "
                  f"Next: `modelhall validate {directory}`.", highlight=False)


def _rename(spec_file: Path, name: str) -> None:
    """Set the spec's top-level ``name:`` line, keeping the template's comments and layout."""
    text, count = re.subn(r"^name:.*$", f"name: {name}", spec_file.read_text(), count=1, flags=re.MULTILINE)
    spec_file.write_text(text if count else f"name: {name}\n{text}")


@friendly_errors
def validate(directory: Annotated[Path, typer.Argument(help="bundle directory or modelhall.yaml")] = Path(".")) -> None:
    """Check a bundle's modelhall.yaml and say what it declares."""
    console.print(f"[green]valid[/green] {_describe(load_spec_file(directory))}", highlight=False)


def schema() -> None:
    """Print the JSON Schema of modelhall.yaml, for editors."""
    print(json.dumps(Spec.model_json_schema(by_alias=True), indent=2))


@friendly_errors
def push(directory: Annotated[Path, typer.Argument(help="bundle directory")],
         reference: Annotated[str, typer.Argument(help="owner/name:tag or host/owner/name:tag")],
         public: Annotated[bool, typer.Option("--public", help="make the repository public")] = False) -> None:
    """Pack a bundle and push it to the registry."""
    client, ref = _client_for(reference)
    with client, pack_bundle(directory) as packed:
        result = push_bundle(client, ref, packed, errors)
        if public:
            client.api("PATCH", f"/repos/{ref.repository}", json={"visibility": "public"})
    console.print(f"pushed {ref} {result.digest} ({result.uploaded} blobs uploaded, {result.skipped} already there)",
                  highlight=False)


@friendly_errors
def pull(reference: Annotated[str, typer.Argument(help="owner/name:tag or host/owner/name:tag")],
         directory: Annotated[Path, typer.Argument(help="empty or new directory")]) -> None:
    """Download a bundle, verify every digest, and unpack it safely."""
    client, ref = _client_for(reference)
    limits = UnpackLimits.from_settings(load_settings())
    with client:
        digest = pull_bundle(client, ref, directory, errors, limits)
    console.print(f"pulled {ref} {digest} into {directory}", highlight=False)


@friendly_errors
def inspect(reference: Annotated[str, typer.Argument(help="owner/name:tag or host/owner/name:tag")],
            raw: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False) -> None:
    """Show a pushed version: manifest, layers, sizes and spec."""
    client, ref = _client_for(reference)
    with client:
        fetched = fetch_manifest(client, ref)
        manifest, digest = fetched.document, fetched.digest
        config = manifest.get("config") or {}
        spec = None
        if config.get("mediaType") == mt.SPEC_MEDIA_TYPE:
            spec = Spec.model_validate(json.loads(client.read_blob(ref.repository, config["digest"])))
    if raw:
        print(json.dumps(manifest, indent=2))
        return
    console.print(f"[bold]{ref}[/bold]  {digest}", highlight=False)
    console.print(f"artifact type: {manifest.get('artifactType') or config.get('mediaType')}", highlight=False)
    table = Table("layer", "media type", "size", "digest")
    for layer in manifest.get("layers") or []:
        title = (layer.get("annotations") or {}).get(mt.ANNOTATION_TITLE, "")
        table.add_row(title, layer["mediaType"], _human(layer["size"]), layer["digest"][:19])
    console.print(table)
    console.print(f"total {_human(fetched.size)} ({fetched.size:,} bytes with the manifest)", highlight=False)
    if spec:
        console.print(_describe(spec), highlight=False)


def _human(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
