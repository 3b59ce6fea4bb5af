"""The model server a runtime starts: ``python -m modelhall.showcase.worker BUNDLE --fd N`` (a listening
socket that the runtime bound and handed over).

Not a Typer command like ``modelhall serve``: importing the whole CLI (Typer, Rich, the
registry client, SQLAlchemy) costs over a second, and every cold start would pay it.
This entry point imports only what serving needs, and starts loading the model first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modelhall.showcase.runner import open_runner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelhall.showcase.worker", description=__doc__)
    parser.add_argument("bundle", type=Path, help="the unpacked bundle")
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket to answer on")
    parser.add_argument("--worker-id", default="", help="the runtime's name for this worker, for its log")
    parser.add_argument("--digest", help="the pushed digest the bundle holds")
    parser.add_argument("--root-path", help="the public path prefix behind the gateway")
    arguments = parser.parse_args(argv)

    runner = open_runner(arguments.bundle, digest=arguments.digest)
    runner.start_loading()  # the model loads while the server is imported
    print(f"{runner.spec.name} {arguments.digest or ''}: worker {arguments.worker_id} loading", flush=True)
    import uvicorn

    from modelhall.showcase.server import create_server

    uvicorn.run(create_server(runner, root_path=arguments.root_path), fd=arguments.fd, log_level="warning")


if __name__ == "__main__":
    main()
