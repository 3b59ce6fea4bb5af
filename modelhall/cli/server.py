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
from modelhall.settings import default_demo_url

DEMO_GALLERY_PORT = 8501


def up(host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="port to listen on")] = 8600,
       demo_port: Annotated[int | None, typer.Option(help="port the demos' own origin listens on "
                                                          "(default: --port + 1)")] = None,
       data_dir: Annotated[Path | None, typer.Option("--data-dir", help="default MODELHALL_DATA_DIR")] = None,
       demo: Annotated[bool, typer.Option("--demo", help="push the starter bundles as demo/<name>")] = False,
       gallery_port: Annotated[int | None, typer.Option(help="also start the gallery on this port "
                                                             "(--demo: 8501)")] = None) -> None:
    """Start the registry and its runtime, and with --demo or --gallery-port the gallery beside it.

    Demos are served on an origin of their own (MODELHALL_DEMO_URL; by default the same interface on
    --demo-port, under the loopback address's other name), from the same process."""
    if data_dir is not None:
        os.environ["MODELHALL_DATA_DIR"] = str(data_dir)
    url = f"http://{host}:{port}"
    demo_port = demo_port or port + 1
    os.environ.setdefault("MODELHALL_URL", url)
    os.environ.setdefault("MODELHALL_DEMO_URL", default_demo_url(url, demo_port))
    gallery_port = gallery_port or (DEMO_GALLERY_PORT if demo else None)
    if gallery_port:
        os.environ.setdefault("MODELHALL_GALLERY_URL", f"http://{host}:{gallery_port}")
    from modelhall.registry.app import create_app
    from modelhall.registry.demo_origin import OriginDispatcher, create_demo_app
    from modelhall.registry.memory import return_large_buffers

    return_large_buffers()
    app = create_app()
    context = app.state.context
    console.print(f"Modelhall registry on {url}  (data in {context.settings.data_dir.resolve()})\n"
                  f"  OCI API   {url}/v2/\n  REST API  {url}/api/v1/repos\n  API docs  {url}/docs\n"
                  f"  demos     {url}/demo/<owner>/<name>/ opens them on {context.settings.demo_url}/ "
                  "(their own origin)"
                  + (f"\n  gallery   http://{host}:{gallery_port}/" if gallery_port else ""), highlight=False)
    warning = sandbox_warning()
    if warning:
        console.print(f"[bold red]{warning}[/bold red]", highlight=False)
    both = OriginDispatcher(app, create_demo_app(app), demo_port)
    config = uvicorn.Config(both, host=host, port=port, log_level=context.settings.log_level,
                            timeout_graceful_shutdown=5)
    demo_config = uvicorn.Config(both, host=host, port=demo_port, log_level=context.settings.log_level)
    sockets = [config.bind_socket(), demo_config.bind_socket()]  # one server, one lifespan: two origins
    server = uvicorn.Server(config)
    if demo:
        from modelhall.cli.demo import start_seeding

        start_seeding(server, context, url, console)
    gallery = start_gallery(gallery_port, url, host) if gallery_port else None
    try:
        server.run(sockets=sockets)
    finally:
        if gallery is not None:
            gallery.terminate()
            gallery.wait()
