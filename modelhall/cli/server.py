"""``modelhall up``: run the platform on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from modelhall.adapters.runtimes.sandbox import sandbox_warning
from modelhall.cli.gallery import start_gallery
from modelhall.cli.output import console

DEMO_GALLERY_PORT = 8501


def up(host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="port to listen on")] = 8600,
       data_dir: Annotated[Path | None, typer.Option("--data-dir", help="default MODELHALL_DATA_DIR")] = None,
       demo: Annotated[bool, typer.Option("--demo", help="push the starter bundles as demo/<name>")] = False,
       gallery_port: Annotated[int | None, typer.Option(help="also start the gallery on this port "
                                                             "(--demo: 8501)")] = None) -> None:
    """Start the registry and its runtime, and with --demo or --gallery-port the gallery beside it."""
    if data_dir is not None:
        os.environ["MODELHALL_DATA_DIR"] = str(data_dir)
    url = f"http://{host}:{port}"
    os.environ.setdefault("MODELHALL_URL", url)
    gallery_port = gallery_port or (DEMO_GALLERY_PORT if demo else None)
    if gallery_port:
        os.environ.setdefault("MODELHALL_GALLERY_URL", f"http://{host}:{gallery_port}")
    from modelhall.registry.app import create_app

    app = create_app()
    context = app.state.context
    console.print(f"Modelhall registry on {url}  (data in {context.settings.data_dir.resolve()})\n"
                  f"  OCI API   {url}/v2/\n  REST API  {url}/api/v1/repos\n  API docs  {url}/docs\n"
                  f"  demos     {url}/demo/<owner>/<name>/"
                  + (f"\n  gallery   http://{host}:{gallery_port}/" if gallery_port else ""), highlight=False)
    warning = sandbox_warning()
    if warning:
        console.print(f"[bold red]{warning}[/bold red]", highlight=False)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=context.settings.log_level,
                                           timeout_graceful_shutdown=5))
    if demo:
        from modelhall.cli.demo import start_seeding

        start_seeding(server, context, url, console)
    gallery = start_gallery(gallery_port, url, host) if gallery_port else None
    try:
        server.run()
    finally:
        if gallery is not None:
            gallery.terminate()
            gallery.wait()
