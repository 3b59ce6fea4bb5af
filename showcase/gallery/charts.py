"""Run history as pictures: runs per day, how long they took, and what waking the model cost.

Each chart is drawn from a summary made here (counts per day, a histogram, five numbers per
start), never from one row per run: the page stays light with 10,000 runs, and with one run
the charts still read (a point, not one bar as wide as the chart; both starts on the axis).
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd

HEIGHT = 220
FEW_RUNS = 20  # up to this many timed runs, the latency chart shows each one
LATENCY_BINS = 30
STARTS = ["cold", "warm", "unknown"]


def runs_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(runs, columns=["created_at", "status", "source", "duration_ms", "cold"])
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    frame["day"] = frame["created_at"].dt.floor("D")
    frame["start"] = frame["cold"].map({True: "cold", False: "warm"}).fillna("unknown")
    frame["duration_ms"] = pd.to_numeric(frame["duration_ms"], errors="coerce")
    return frame


def runs_per_day(frame: pd.DataFrame) -> alt.Chart:
    counts = frame.groupby(["day", "status"]).size().reset_index(name="runs")
    return alt.Chart(counts).mark_bar().encode(
        x=alt.X("yearmonthdate(day):T", title="day", axis=alt.Axis(format="%b %d", labelAngle=0)),
        y=alt.Y("runs:Q", title="runs", axis=alt.Axis(tickMinStep=1)),
        color=alt.Color("status:N", title="status"), tooltip=[alt.Tooltip("day:T"), "status:N", "runs:Q"],
    ).properties(title="Runs per day", height=HEIGHT, width="container")


def latency_histogram(frame: pd.DataFrame) -> alt.Chart:
    timed = frame["duration_ms"].dropna()
    title = "Latency"
    if len(timed) <= FEW_RUNS:  # a histogram of one run is one bar as wide as the chart: show the runs
        points = pd.DataFrame({"duration_ms": timed.to_numpy()})
        return alt.Chart(points).mark_tick(thickness=2, size=40).encode(
            x=alt.X("duration_ms:Q", title="prediction time (ms)", scale=alt.Scale(zero=True)),
            tooltip=[alt.Tooltip("duration_ms:Q", format=".1f")],
        ).properties(title=title, height=HEIGHT, width="container")
    counts, edges = np.histogram(timed.to_numpy(), bins=LATENCY_BINS)
    bins = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "runs": counts})
    return alt.Chart(bins).mark_bar().encode(
        x=alt.X("from:Q", title="prediction time (ms)"), x2="to:Q",
        y=alt.Y("runs:Q", title="runs", axis=alt.Axis(tickMinStep=1)),
        tooltip=[alt.Tooltip("from:Q", format=".1f"), alt.Tooltip("to:Q", format=".1f"), "runs:Q"],
    ).properties(title=title, height=HEIGHT, width="container")


def start_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per start (cold, warm, unknown): runs, and the minimum, quartiles and maximum of their times."""
    timed = frame.dropna(subset=["duration_ms"])
    grouped = timed.groupby("start")["duration_ms"]
    summary = pd.DataFrame({"runs": grouped.size(), "min": grouped.min(), "q1": grouped.quantile(0.25),
                            "median": grouped.median(), "q3": grouped.quantile(0.75), "max": grouped.max()})
    return summary.reindex([s for s in STARTS if s in summary.index or s != "unknown"]).reset_index(names="start")


def cold_versus_warm(frame: pd.DataFrame) -> alt.LayerChart:
    summary = start_summary(frame)
    base = alt.Chart(summary).encode(
        x=alt.X("start:N", title=None, sort=STARTS, scale=alt.Scale(domain=list(summary["start"]))),
        tooltip=["start:N", "runs:Q", alt.Tooltip("median:Q", format=".1f", title="median (ms)")])
    whiskers = base.mark_rule().encode(y=alt.Y("min:Q", title="prediction time (ms)"), y2="max:Q")
    boxes = base.mark_bar(size=28).encode(y="q1:Q", y2="q3:Q", color=alt.Color("start:N", legend=None))
    medians = base.mark_tick(color="white", size=28, thickness=2).encode(y="median:Q")
    return alt.layer(whiskers, boxes, medians).properties(
        title=alt.TitleParams("Cold versus warm", anchor="start"), height=HEIGHT, width="container")
