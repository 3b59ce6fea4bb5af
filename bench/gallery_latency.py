"""The gallery at scale: 10,000 models, the REST calls the gallery makes, and the first cards on screen.

Seeds a registry's database with ``BENCH_MODELS`` repositories (default 10,000) with
catalog rows, as pushes would leave them (a few are real pushed bundles), then measures,
each over ``BENCH_CALLS`` calls: p50 and p95 of the listing calls the browse page makes
(first page, a search, a filter, sorted by runs, the facets), beside ``GET /api/v1/whoami``
as the baseline in the same process; and, over ``BENCH_PAGES`` loads in headless
Chromium, the time until the browse page shows its first cards, beside loading a small
static page of the registry's (the logout page) as the baseline, and an empty Streamlit
app (the floor any Streamlit page has on this machine). Targets: API p95 ≤ 50 ms, first cards ≤ 1.5 s.
Run with ``make bench-gallery``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from modelhall.cli.gallery import gallery_command
from modelhall.registry.db.models import Repository
from modelhall.registry.db.session import make_session_factory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import RegistryServer, free_port  # noqa: E402

MODELS = int(os.environ.get("BENCH_MODELS", "10000"))
CALLS = int(os.environ.get("BENCH_CALLS", "60"))
PAGES = int(os.environ.get("BENCH_PAGES", "9"))
TASKS = ["image-classification", "image-to-image", "text-generation", "text-classification", "translation"]
FRAMEWORKS = ["pytorch", "transformers", "jax", "sklearn", "onnx"]
TYPES = {"image-classification": (" image ", " label "), "image-to-image": (" image ", " image "),
         "text-generation": (" text ", " text "), "text-classification": (" text ", " label "),
         "translation": (" text ", " text ")}
WORDS = "vision language digits winter snow portrait translation sentiment speech tiny robust fast".split()


def seed(registry: RegistryServer, count: int) -> None:
    """``count`` public repositories as the catalog would describe them, in one transaction."""
    engine = registry.engine()
    rng = random.Random(7)
    now = datetime.now(UTC)
    rows = []
    for number in range(count):
        task = rng.choice(TASKS)
        words = " ".join(rng.sample(WORDS, 3))
        name = f"lab{number % 200}/model-{number}"
        rows.append({
            "name": name, "namespace": name.split("/")[0], "visibility": "public", "weights": "downloadable",
            "description": f"A {words} model", "created_at": now, "updated_at": now - timedelta(minutes=number),
            "latest_digest": f"sha256:{number:064x}", "task": task, "framework": rng.choice(FRAMEWORKS),
            "license": "mit", "tags": words.split(), "input_types": TYPES[task][0], "output_types": TYPES[task][1],
            "search_text": f"{name} a {words} model {task}", "run_count": rng.randint(0, 5000),
        })
    with make_session_factory(engine)() as db:
        db.execute(insert(Repository), rows)
        db.commit()
    engine.dispose()


def timed(call: Callable[[], object], count: int) -> list[float]:
    call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def p50_p95(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def api_rows(url: str) -> list[tuple[str, float, float]]:
    client = httpx.Client(base_url=url, timeout=30)
    calls = {
        "whoami (baseline)": lambda: client.get("/api/v1/whoami"),
        "browse: first page": lambda: client.get("/api/v1/repos", params={"limit": 24}),
        "browse: page 200": lambda: client.get("/api/v1/repos", params={"limit": 24, "offset": 24 * 200}),
        "search 'winter snow'": lambda: client.get("/api/v1/repos", params={"q": "winter snow", "limit": 24}),
        "filter image → label": lambda: client.get("/api/v1/repos", params={"input_type": "image",
                                                                             "output_type": "label", "limit": 24}),
        "sort by runs": lambda: client.get("/api/v1/repos", params={"sort": "runs", "limit": 24}),
        "facets": lambda: client.get("/api/v1/repos/facets"),
    }
    return [(label, *p50_p95(timed(call, CALLS))) for label, call in calls.items()]


EMPTY_APP = "import streamlit as st\n\nst.markdown('[first link](?x=1)')\n"


def page_times(gallery_url: str, registry_url: str, empty_url: str) -> dict[str, list[float]]:
    """Seconds until the first card's link is visible; until a static registry page is loaded (the
    baseline); and until an empty Streamlit app shows a link (what any Streamlit page costs here)."""
    times: dict[str, list[float]] = {"static": [], "empty": [], "cards": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for _ in range(PAGES + 1):  # the first load warms caches and is dropped
            page = browser.new_page()
            for key, url, wait in (("cards", gallery_url, lambda: page.get_by_role("link", name="lab0/model-0")),
                                   ("empty", empty_url, lambda: page.get_by_role("link", name="first link")),
                                   ("static", f"{registry_url}/auth/logout", None)):
                start = time.perf_counter()
                page.goto(url, wait_until="load")
                if wait is not None:
                    wait().wait_for(timeout=60_000)
                times[key].append(time.perf_counter() - start)
            page.close()
        browser.close()
    return {key: samples[1:] for key, samples in times.items()}


def main() -> None:
    console = Console()
    data = Path(tempfile.mkdtemp(prefix="modelhall-bench-gallery-"))
    registry = RegistryServer(data_dir=data / "registry", database=os.environ.get("BENCH_DATABASE"))
    registry.start()
    gallery_port, empty_port = free_port(), free_port()
    gallery = subprocess.Popen(gallery_command(gallery_port), env={**registry.env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    (data / "empty_app.py").write_text(EMPTY_APP)
    empty_command = [*gallery_command(empty_port)[:4], str(data / "empty_app.py"), *gallery_command(empty_port)[5:]]
    empty = subprocess.Popen(empty_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        console.print(f"seeding {MODELS} models …")
        seed(registry, MODELS)
        rows = api_rows(registry.url)
        baseline = rows[0][1]
        table = Table(title=f"REST calls the gallery makes, {MODELS} models ({CALLS} calls each)")
        for column in ("call", "p50 ms", "p95 ms", "p50 / baseline"):
            table.add_column(column, justify="left" if column == "call" else "right")
        for label, p50, p95 in rows:
            table.add_row(label, f"{p50:.1f}", f"{p95:.1f}", f"{p50 / baseline:.1f}×")
        console.print(table)
        times = page_times(f"http://127.0.0.1:{gallery_port}", registry.url, f"http://127.0.0.1:{empty_port}")
        pages = Table(title=f"Headless Chromium, median of {PAGES} loads")
        for column in ("page", "median s", "max s", "ratio to baseline"):
            pages.add_column(column, justify="left" if column == "page" else "right")
        baseline = statistics.median(times["static"])
        for key, label in (("static", "a static registry page (baseline)"),
                           ("empty", "an empty Streamlit app: first link"),
                           ("cards", "gallery: first cards visible")):
            pages.add_row(label, f"{statistics.median(times[key]):.2f}", f"{max(times[key]):.2f}",
                          f"{statistics.median(times[key]) / baseline:.1f}×")
        console.print(pages)
    finally:
        for process in (gallery, empty):
            process.terminate()
            process.wait(timeout=15)
        registry.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
