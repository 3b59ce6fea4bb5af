"""``modelhall up``: run the platform on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from modelhall.cli.output import console


def up(host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="port to listen on")] = 8600,
       data_dir: Annotated[Path | None, typer.Option("--data-dir", help="default MODELHALL_DATA_DIR")] = None) -> None:
    """Start the registry (runtime and gallery join it as they land)."""
    if data_dir is not None:
        os.environ["MODELHALL_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("MODELHALL_URL", f"http://{host}:{port}")
    from modelhall.registry.app import create_app

    app = create_app()
    settings = app.state.context.settings
    console.print(f"Modelhall registry on http://{host}:{port}  (data in {settings.data_dir.resolve()})\n"
                  f"  OCI API   http://{host}:{port}/v2/\n  REST API  http://{host}:{port}/api/v1/repos\n"
                  f"  API docs  http://{host}:{port}/docs", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
