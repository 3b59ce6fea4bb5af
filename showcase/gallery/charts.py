"""Run history as pictures: runs per day, how long they took, and what waking the model cost."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd


def runs_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(runs, columns=["created_at", "status", "source", "duration_ms", "cold"])
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    frame["day"] = frame["created_at"].dt.floor("D")
    frame["start"] = frame["cold"].map({True: "cold", False: "warm"}).fillna("unknown")
    return frame


def runs_per_day(frame: pd.DataFrame) -> alt.Chart:
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("day:T", title="day"), y=alt.Y("count():Q", title="runs"),
        color=alt.Color("status:N", title="status"), tooltip=["day:T", "status:N", "count():Q"],
    ).properties(title="Runs per day", height=220)


def latency_histogram(frame: pd.DataFrame) -> alt.Chart:
    timed = frame.dropna(subset=["duration_ms"])
    return alt.Chart(timed).mark_bar().encode(
        x=alt.X("duration_ms:Q", bin=alt.Bin(maxbins=30), title="prediction time (ms)"),
        y=alt.Y("count():Q", title="runs"), tooltip=["count():Q"],
    ).properties(title="Latency", height=220)


def cold_versus_warm(frame: pd.DataFrame) -> alt.Chart:
    timed = frame.dropna(subset=["duration_ms"])
    return alt.Chart(timed).mark_boxplot(extent="min-max").encode(
        x=alt.X("start:N", title="start"), y=alt.Y("duration_ms:Q", title="prediction time (ms)"),
        color=alt.Color("start:N", legend=None),
    ).properties(title="Cold versus warm", height=220)
