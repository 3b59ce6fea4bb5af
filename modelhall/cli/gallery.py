"""``modelhall gallery``: the Streamlit gallery, as its own process beside the registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelhall.settings import load_settings

def gallery_command(port: int, host: str = "127.0.0.1") -> list[str]:
    from modelhall.showcase import gallery

    app = Path(gallery.__file__).resolve().parent / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port), "--server.address", host,
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
            "--client.showErrorDetails", "none",  # a bug shows a generic message; the traceback goes to the log
            # no reloading on source changes: watching every imported module took 40% of the gallery's CPU
            "--server.fileWatcherType", "none"]


def gallery_environment(port: int, registry_url: str, host: str = "127.0.0.1") -> dict[str, str]:
    """The gallery reads the registry at ``registry_url``. Its own public address is
    ``MODELHALL_GALLERY_URL`` when set (behind an ingress it is not the address it listens on), else the one
    it listens on."""
    return {**os.environ, "MODELHALL_URL": registry_url,
            "MODELHALL_GALLERY_URL": os.environ.get("MODELHALL_GALLERY_URL") or f"http://{host}:{port}"}


def start_gallery(port: int, registry_url: str, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """The gallery as a child process."""
    return subprocess.Popen(gallery_command(port, host), env=gallery_environment(port, registry_url, host),
                            stdin=subprocess.DEVNULL)


def gallery(port: Annotated[int, typer.Option(help="port to listen on")] = 8501,
            host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1") -> None:
    """Run the gallery against the registry at MODELHALL_URL."""
    process = start_gallery(port, load_settings().url, host)
    # Stopped by SIGTERM (a container stop; as PID 1 it would otherwise ignore it): the gallery stops with it.
    signal.signal(signal.SIGTERM, lambda signum, frame: process.terminate())
    try:
        raise typer.Exit(process.wait())
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
