"""Running one bundle on this machine: ``serve`` (demo + API) and ``predict`` (one prediction)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from modelhall.cli.output import console, errors, friendly_errors


@friendly_errors
def serve(bundle: Annotated[Path, typer.Argument(help="bundle directory")] = Path("."),
          host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port to listen on")] = 8700,
          digest: Annotated[str | None, typer.Option(help="the pushed digest this folder holds, shown in the demo")] = None,
          uds: Annotated[Path | None, typer.Option(help="listen on this Unix socket instead of host:port")] = None,
          root_path: Annotated[str | None, typer.Option(help="public path prefix behind a proxy, e.g. /demo/a/b")] = None,
          ) -> None:
    """Serve a bundle's generated demo and predict API from this environment."""
    from modelhall.showcase.runner import open_runner

    with tempfile.TemporaryDirectory(prefix="modelhall-serve-") as scratch:  # removed when the server stops
        runner = open_runner(bundle, digest=digest, scratch=Path(scratch))
        runner.start_loading()  # before importing the server: the two overlap
        from modelhall.showcase.server import create_server

        app = create_server(runner, root_path=root_path)
        where = f"unix:{uds}" if uds else f"http://{host}:{port}"
        console.print(f"{app.state.runner.spec.name}: demo {where}/  ·  POST /predict  ·  GET /spec  ·  "
                      "GET /healthz  ·  GET /metrics", highlight=False)
        if uds:
            uvicorn.run(app, uds=str(uds), log_level="warning")
        else:
            uvicorn.run(app, host=host, port=port, log_level="warning")


@friendly_errors
def predict(bundle: Annotated[Path, typer.Argument(help="bundle directory")],
            inputs: Annotated[list[str], typer.Option("--input", "-i", help="name=value; @path for files")] = [],  # noqa: B006
            output_dir: Annotated[Path, typer.Option(help="where file and image outputs are saved")] = Path("outputs"),
            ) -> None:
    """Run one prediction from the shell and print the outputs."""
    from modelhall.adapters.models import ModelError
    from modelhall.showcase.runner import Health, ModelRunner
    from modelhall.showcase.values import InputError, coerce_text_values, to_json
    from modelhall.spec import load_spec_file

    spec = load_spec_file(bundle)
    pairs = dict(item.partition("=")[::2] for item in inputs)
    with tempfile.TemporaryDirectory(prefix="modelhall-predict-") as scratch:
        runner = ModelRunner(spec, bundle.resolve(), Path(scratch))
        runner.load()
        if runner.health is not Health.READY:
            errors.print(f"Error: the model did not load: {runner.error}", highlight=False)
            raise typer.Exit(1)
        try:
            prediction = runner.predict(coerce_text_values(spec, pairs))
        except (InputError, ModelError) as error:
            errors.print(f"Error: {error}", highlight=False)
            raise typer.Exit(1) from None
        rendered = to_json(spec, prediction.outputs)
        for name, value in prediction.outputs.items():
            if isinstance(rendered[name], dict) and "data" in rendered[name]:
                output_dir.mkdir(parents=True, exist_ok=True)
                saved = output_dir / rendered[name]["name"]
                if isinstance(value, Path):
                    shutil.copyfile(value, saved)
                else:
                    value.save(saved)
                rendered[name] = str(saved)
    print(json.dumps(rendered, indent=2))


importer = typer.Typer(help="Turn models from elsewhere into bundles.", no_args_is_help=True)


@importer.command("hf")
@friendly_errors
def import_hf(source: Annotated[str, typer.Argument(help="a local snapshot folder, or a Hub repo id")],
              directory: Annotated[Path, typer.Argument(help="new bundle directory")]) -> None:
    """Make a bundle from a Hugging Face model snapshot (config, tokenizer, weights or a GGUF file)."""
    from modelhall.bundle.from_huggingface import import_huggingface

    spec = import_huggingface(source, directory)
    console.print(f"created {directory}: {spec.name}, task {spec.task}. Next: `modelhall serve {directory}`",
                  highlight=False)
