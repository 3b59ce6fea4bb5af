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
CONSTRAINTS = ("min", "max", "step", "choices", "max_length", "default", "labels", "extensions")


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


def badges(metadata: dict[str, Any], model: dict[str, Any]) -> str:
    values = [("task", model.get("task")), ("framework", model.get("framework")), ("license", model.get("license")),
              ("visibility", model.get("visibility")), ("weights", model.get("weights"))]
    values += [(key, value) for key, value in metadata.items() if isinstance(value, (str, int, float))]
    values += [("tag", tag) for tag in model.get("tags") or []]
    return " ".join(f":blue-badge[{key}: {value}]" for key, value in values if value not in (None, ""))


def signature_table(spec: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for direction in ("inputs", "outputs"):
        for field in spec.get(direction, []):
            constraints = ", ".join(f"{key}={field[key]}" for key in CONSTRAINTS if field.get(key) not in (None, []))
            rows.append({"": direction[:-1], "name": field["name"], "type": field["type"],
                         "label": field.get("label") or "", "constraints": constraints})
    return pd.DataFrame(rows)


def versions_table(versions: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"tag": v["tag"], "version": v["version"], "digest": v["digest"],
                          "size (MB)": round(v["size"] / 1e6, 2), "pushed": v["pushed_at"][:16].replace("T", " ")}
                         for v in versions])


def deployment_note(api: GalleryAPI, name: str) -> None:
    try:
        state = api.deployment(name)
    except GalleryError:
        return
    if state["state"] == "failed":
        st.error(f"The model failed to start: {state.get('detail') or state.get('build_error')}")
    elif state["state"] in ("sleeping", "starting"):
        st.info("The model is asleep and wakes when the demo opens; the first answer takes a little longer.")


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
            runs_section(api.runs(name))
        except GalleryError as error:
            st.info(f"The run history is for the model's members: {error}")
    with tabs[6]:
        authoring.render(api, name, model, versions)
