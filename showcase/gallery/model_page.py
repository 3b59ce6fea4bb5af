"""One model: its card, signature, versions, the live demo, how to call it, and its run history."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import yaml

from modelhall.showcase.gallery import authoring, charts
from modelhall.showcase.gallery.api import GalleryAPI, GalleryError, NotFound
from modelhall.showcase.gallery.snippets import snippets

DEMO_HEIGHT = 820
STATE_POLL_SECONDS = 3
RUNS_SHOWN = 500


def split_model_card(readme: str | None) -> tuple[dict[str, Any], str]:
    """The README's Hugging Face-style YAML metadata (shown as badges) and its text."""
    if not readme or not readme.startswith("---"):
        return {}, readme or ""
    _, _, rest = readme.partition("---")
    header, separator, body = rest.partition("\n---")
    if not separator:
        return {}, readme
    try:
        metadata = yaml.safe_load(header) or {}
    except yaml.YAMLError:
        return {}, readme
    return (metadata if isinstance(metadata, dict) else {}), body.lstrip("-\n")


SAME_AS = {"pipeline_tag": "task", "library_name": "framework"}  # model-card keys that say what a spec key says
CARD_LISTS = {"tags": "tag", "datasets": "dataset", "language": "language"}


def badges(metadata: dict[str, Any], model: dict[str, Any]) -> str:
    """The spec's facts and the model card's metadata as one set of badges: a fact both give (the
    license, the task) once, whatever its case; the card's lists (tags, datasets) one badge per item."""
    values = [("task", model.get("task")), ("framework", model.get("framework")), ("license", model.get("license")),
              ("visibility", model.get("visibility")), ("weights", model.get("weights"))]
    values += [("tag", tag) for tag in model.get("tags") or []]
    for key, value in metadata.items():
        if key in CARD_LISTS and isinstance(value, list):
            values += [(CARD_LISTS[key], item) for item in value if isinstance(item, (str, int, float))]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            values.append((SAME_AS.get(key, key), value))
    shown: dict[tuple[str, str], str] = {}
    for key, value in values:
        if value not in (None, ""):
            shown.setdefault((key, str(value).casefold()), f":blue-badge[{key}: {value}]")
    return " ".join(shown.values())


def constraints(field: dict[str, Any]) -> str:
    """What a field accepts, in words: bounds, choices, lengths, file types and sizes, its default."""
    parts = []
    low, high = field.get("min"), field.get("max")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    if field.get("step") is not None:
        parts.append(f"in steps of {field['step']}")
    if field.get("choices"):
        parts.append(("any of " if field.get("multiple") else "one of ") + ", ".join(map(str, field["choices"])))
    if field.get("max_length") is not None:
        parts.append(f"at most {field['max_length']} characters")
    if field.get("accept"):
        parts.append(" ".join(field["accept"]))
    if field.get("max_size") is not None:
        parts.append(f"up to {_size(field['max_size'])}")
    if field.get("top_k") is not None:
        parts.append(f"top {field['top_k']}")
    if field.get("default") not in (None, "", []):
        parts.append(f"default {field['default']}")
    if field.get("required") is False:
        parts.append("optional")
    return "; ".join(parts)


def _size(size: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"


def signature_table(spec: dict[str, Any]) -> pd.DataFrame:
    rows = [{"": direction[:-1], "name": field["name"], "type": field["type"], "label": field.get("label") or "",
             "constraints": constraints(field)}
            for direction in ("inputs", "outputs") for field in spec.get(direction, [])]
    return pd.DataFrame(rows)


def versions_table(versions: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"tag": v["tag"], "version": v["version"], "digest": v["digest"],
                          "size (MB)": round(v["size"] / 1e6, 2), "pushed": v["pushed_at"][:16].replace("T", " ")}
                         for v in versions])


DEPLOYMENT_STATES = {  # state → (how it is drawn, what it says)
    "sleeping": ("info", "Asleep: the model wakes when the demo opens; the first answer takes a little longer."),
    "starting": ("info", "Starting… the demo appears once the model has loaded."),
    "running": ("success", "Running."),
    "failed": ("error", "The model failed to start: {detail}"),
    "unschedulable": ("warning", "The model cannot be started here now: {detail}"),
}


def deployment_message(state: dict[str, Any]) -> tuple[str, str]:
    """How to draw a deployment's state (``info``, ``success``, ``warning``, ``error``) and what it says."""
    kind, text = DEPLOYMENT_STATES.get(state["state"], ("info", f"State: {state['state']}."))
    detail = state.get("detail") or state.get("build_error") or "no reason was given"
    if state["state"] == "running":
        ready = sum(worker["state"] == "ready" for worker in state.get("workers", []))
        text = f"Running ({ready} worker{'s' if ready != 1 else ''})."
    return kind, text.format(detail=detail)


@st.fragment(run_every=STATE_POLL_SECONDS)
def deployment_note(api: GalleryAPI, name: str) -> None:
    """The deployment's state as it is now, asked again every few seconds (a fragment: the demo's frame
    beside it is not redrawn)."""
    try:
        state = api.deployment(name)
    except GalleryError:
        return
    kind, text = deployment_message(state)
    getattr(st, kind)(text)


def demo_entry(api: GalleryAPI, name: str) -> dict[str, str] | None:
    """The demo's address on the demo origin for this viewer (see :meth:`GalleryAPI.demo_ticket`),
    asked for once per model and credential in a viewer's session: a new ticket on every rerun would
    reload the iframe and lose what the viewer did in the demo. The cookie the demo origin gave for
    the first one keeps the demo open after the ticket is spent."""
    remembered = f"demo-entry:{name}:{api.viewer.token or ''}"
    if remembered not in st.session_state:
        try:
            st.session_state[remembered] = api.demo_ticket(name)
        except GalleryError as error:
            st.info(f"The demo cannot be opened: {error}")
            return None
    return st.session_state[remembered]


def show_snippets(by_language: dict[str, str]) -> None:
    for language, code in by_language.items():
        st.markdown(f"**{language}**")
        st.code(code, language="bash" if language == "curl" else "python")


def runs_section(runs: list[dict[str, Any]]) -> None:
    if not runs:
        st.info("No runs yet.")
        return
    frame = charts.runs_frame(runs)
    if len(runs) >= RUNS_SHOWN:
        st.caption(f"The newest {RUNS_SHOWN} runs.")
    left, middle, right = st.columns(3)
    left.altair_chart(charts.runs_per_day(frame), width="stretch")
    middle.altair_chart(charts.latency_histogram(frame), width="stretch")
    right.altair_chart(charts.cold_versus_warm(frame), width="stretch")
    st.dataframe(frame[["created_at", "source", "status", "duration_ms", "start"]].head(200), hide_index=True)


def render(api: GalleryAPI, name: str) -> None:
    try:
        model = api.model(name)
    except NotFound:
        st.warning(f"There is no model {name!r}, or you may not see it. Log in, or ask its owner for a share link.")
        return
    versions = api.versions(name)
    latest = model.get("latest")
    version = api.version(name, latest["tag"]) if latest else None
    spec = (version or {}).get("spec") or {}
    metadata, card_text = split_model_card((version or {}).get("readme"))
    st.title(name)
    st.write(model["description"])
    st.markdown(badges(metadata, model))
    if version is None:
        st.info("No version has been pushed yet.")
        return
    tabs = st.tabs(["Demo", "Model card", "Signature", "Versions", "Use the API", "Runs", "Settings"])
    with tabs[0]:
        deployment_note(api, name)
        entry = demo_entry(api, name)
        if entry:
            st.iframe(entry["url"], height=DEMO_HEIGHT)
    with tabs[1]:
        st.markdown(card_text or "_This model has no model card._")
    with tabs[2]:
        st.dataframe(signature_table(spec), hide_index=True)
    with tabs[3]:
        st.dataframe(versions_table(versions), hide_index=True)
    with tabs[4]:
        demo_api = entry["api"] if entry else f"{api.browser_url}/demo/{name}/"
        show_snippets(snippets(f"{api.browser_url}/api/v1/repos/{name}/predict", demo_api, spec, "token"))
    with tabs[5]:
        try:
            runs_section(api.runs(name, limit=RUNS_SHOWN))
        except GalleryError as error:
            st.info(f"The run history is for the model's members: {error}")
    with tabs[6]:
        authoring.render(api, name, model, versions)
