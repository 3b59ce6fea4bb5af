"""What an author manages on a model page: visibility, weights, share links, versions.

Shown to whoever the registry lets manage the model; everyone else sees why not.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from modelhall.showcase.gallery.api import GalleryAPI, GalleryError

VISIBILITIES = ("public", "internal", "private")
WEIGHTS = ("downloadable", "hidden")


def render(api: GalleryAPI, name: str, model: dict[str, Any], versions: list[dict[str, Any]]) -> None:
    try:
        links = api.shares(name)
    except GalleryError:
        st.info("Only the model's maintainers can change its settings and share it.")
        return
    access_settings(api, name, model)
    share_links(api, name, links, versions)
    version_removal(api, name, versions)


def access_settings(api: GalleryAPI, name: str, model: dict[str, Any]) -> None:
    st.subheader("Who can see it")
    with st.form("access"):
        visibility = st.radio("Visibility", VISIBILITIES, index=VISIBILITIES.index(model["visibility"]),
                              horizontal=True, help="internal: anyone logged in to this Modelhall")
        weights = st.radio("Weights", WEIGHTS, index=WEIGHTS.index(model["weights"]), horizontal=True,
                           help="hidden: only members may pull the bundle; others can still run the demo")
        if st.form_submit_button("Save"):
            api.update(name, visibility=visibility, weights=weights)
            st.success(f"{name} is now {visibility}, weights {weights}.")


def share_links(api: GalleryAPI, name: str, links: list[dict[str, Any]], versions: list[dict[str, Any]]) -> None:
    st.subheader("Share links")
    if links:
        table = pd.DataFrame([{
            "id": link["id"], "label": link["label"], "state": link["state"],
            "anonymous": "yes" if link["anonymous"] else "", "pinned": (link["digest"] or "")[:19],
            "created": link["created_at"][:16].replace("T", " "),
            "expires": (link["expires_at"] or "never")[:16].replace("T", " "),
            "runs": f"{link['runs_used']}" + (f" / {link['run_quota']}" if link["run_quota"] else ""),
        } for link in links])
        st.dataframe(table, hide_index=True)
        active = [link for link in links if link["state"] == "active"]
        if active:
            chosen = st.selectbox("Revoke a link", active, format_func=lambda link: f"#{link['id']} {link['label']}")
            if st.button("Revoke", type="secondary"):
                api.revoke_share(name, chosen["id"])
                st.rerun()
    else:
        st.caption("No share links yet.")
    with st.form("new-share"):
        label = st.text_input("Label", placeholder="e.g. NeurIPS reviewer 2")
        days = st.number_input("Expires after (days)", min_value=1, max_value=3650, value=30)
        anonymous = st.checkbox("Anonymous (double-blind: the reviewer sees no owner)")
        pin = st.selectbox("Version", ["newest, as it changes", *[v["tag"] for v in versions]])
        quota = st.number_input("Run quota (0: no limit)", min_value=0, value=0)
        if st.form_submit_button("Create link"):
            created = api.create_share(name, label=label, expires_in_days=days, anonymous=anonymous,
                                       pin=None if pin.startswith("newest") else pin, run_quota=quota or None)
            st.success("Copy the link now: it is shown only once.")
            st.code(created["url"], language=None)


def version_removal(api: GalleryAPI, name: str, versions: list[dict[str, Any]]) -> None:
    st.subheader("Versions")
    if not versions:
        return
    chosen = st.selectbox("Delete a version", versions,
                          format_func=lambda v: f"{v['tag']} ({v['digest'][:19]}…)")
    confirmed = st.checkbox(f"Yes, delete {chosen['tag']} and every tag naming it")
    if st.button("Delete version", disabled=not confirmed):
        api.delete_version(name, chosen["digest"])
        st.rerun()
