"""What a share link opens: the model's page with reviewer access and nothing else.

An anonymous link's page names no owner: the registry leaves the owner out of what it
sends, and this page shows only what it gets.
"""

from __future__ import annotations

import streamlit as st

from modelhall.showcase.gallery.api import GalleryAPI, GalleryError
from modelhall.showcase.gallery.model_page import (
    DEMO_HEIGHT,
    runs_section,
    show_snippets,
    signature_table,
    split_model_card,
)
from modelhall.showcase.gallery.snippets import snippets


def render(api: GalleryAPI, token: str) -> None:
    try:
        shared = api.shared()
    except GalleryError as error:
        st.error(f"This share link does not open anything now: {error}")
        return
    spec = shared["spec"]
    _, card_text = split_model_card(shared.get("readme"))
    st.title(spec.get("name", "A shared model"))
    st.write(spec.get("description") or "")
    facts = [f"shared by {shared['owner']}" if shared["owner"] else "shared anonymously for review",
             f"version {spec.get('version')}", "pinned to this version" if shared["pinned"] else "newest version",
             f"expires {shared['expires_at'][:10]}" if shared["expires_at"] else "no expiry",
             f"{shared['runs_left']} runs left" if shared["runs_left"] is not None else None]
    st.caption(" · ".join(fact for fact in facts if fact))
    tabs = st.tabs(["Demo", "Model card", "Signature", "Use the API", "Your runs"])
    remembered = f"shared-demo-entry:{token}"  # once per session, as model_page.demo_entry says why
    if remembered not in st.session_state:
        st.session_state[remembered] = api.shared_demo_ticket()
    entry = st.session_state[remembered]
    with tabs[0]:
        st.iframe(entry["url"], height=DEMO_HEIGHT)
    with tabs[1]:
        st.markdown(card_text or "_This model has no model card._")
    with tabs[2]:
        st.dataframe(signature_table(spec), hide_index=True)
    with tabs[3]:
        show_snippets(snippets(f"{api.browser_url}/api/v1/shared/predict", entry["api"], spec, "share"))
    with tabs[4]:
        runs_section(api.shared_runs())
