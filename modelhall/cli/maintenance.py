"""``modelhall admin gc``: what the garbage collector would free on this server's storage, and freeing it."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from modelhall.adapters.storage import open_blob_store
from modelhall.cli.output import console
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.registry.gc import collect
from modelhall.settings import load_settings


def gc(apply: Annotated[bool, typer.Option("--apply", help="delete; without it, only say what would go")] = False,
       grace: Annotated[float | None, typer.Option(
           help="keep unreferenced blobs younger than this many seconds (uploads in flight); "
                "default MODELHALL_GC_BLOB_GRACE")] = None,
       upload_ttl: Annotated[float | None, typer.Option(
           help="sweep uploads not written to for this many seconds; default MODELHALL_UPLOAD_TTL")] = None,
       ) -> None:
    """Find blobs nothing references and abandoned uploads; a dry run unless --apply."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    migrate(engine)
    try:
        garbage = collect(make_session_factory(engine), open_blob_store(settings.storage_url), apply=apply,
                          blob_grace=timedelta(seconds=settings.gc_blob_grace if grace is None else grace),
                          upload_ttl=timedelta(seconds=settings.upload_ttl if upload_ttl is None else upload_ttl))
    finally:
        engine.dispose()
    table = Table("kind", "name", "bytes", "last written")
    for kind, items in (("blob", garbage.blobs), ("upload", garbage.uploads)):
        for item in items:
            table.add_row(kind, item.name, str(item.size), item.modified.strftime("%Y-%m-%d %H:%M:%S UTC"))
    if table.rows:
        console.print(table)
    verb = "freed" if apply else "would free"
    console.print(f"{verb} {garbage.freed_bytes} bytes: {len(garbage.blobs)} blobs, {len(garbage.uploads)} uploads, "
                  f"{len(garbage.sessions)} upload sessions"
                  + (f"; {garbage.kept} blobs kept, referenced again meanwhile" if garbage.kept else "")
                  + ("" if apply else " (dry run: --apply deletes)"), highlight=False)
