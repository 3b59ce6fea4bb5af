"""The Modelhall gallery: ``streamlit run showcase/gallery/app.py`` (``make demo`` starts it).

Pages, chosen by the URL: the browse page (``/``), a model (``?model=owner/name``), what a
share link opens (``?share=mhs_…``) and the viewer's own models (``?mine=1``). Everything
comes from the registry's REST API (``MODELHALL_URL``) as the viewer: the registry session
cookie the browser sends along, or an access token pasted in the sidebar.
"""

from __future__ import annotations

import os

import streamlit as st

from modelhall.showcase.gallery import browse, model_page, shared_page
from modelhall.showcase.gallery.api import SESSION_COOKIE, GalleryAPI, GalleryError, RegistryUnreachable, Viewer

REGISTRY = os.environ.get("MODELHALL_URL", "http://127.0.0.1:8600").rstrip("/")
PUBLIC_REGISTRY = os.environ.get("MODELHALL_PUBLIC_URL", REGISTRY).rstrip("/")
GALLERY = os.environ.get("MODELHALL_GALLERY_URL", "http://127.0.0.1:8501").rstrip("/")


def viewer() -> Viewer:
    params = st.query_params
    return Viewer(session_cookie=st.context.cookies.get(SESSION_COOKIE), token=st.session_state.get("token"),
                  share=params.get("share"))


def account(api: GalleryAPI) -> None:
    """Who is looking, and how to log in or out."""
    sidebar = st.sidebar
    user = api.whoami()
    sidebar.markdown("[All models](?)")
    if user:
        sidebar.markdown(f"Logged in as **{user}**")
        sidebar.markdown("[My models](?mine=1)")
        if st.session_state.get("token"):
            if sidebar.button("Forget the token"):
                del st.session_state["token"]
                st.rerun()
        else:
            sidebar.link_button("Log out", f"{api.browser_url}/auth/logout?next={GALLERY}/")
        return
    for provider in api.providers():
        sidebar.link_button(f"Log in with {provider['name']}",
                            f"{api.browser_url}{provider['login']}?next={GALLERY}/")
    with sidebar.expander("Log in with an access token"):
        token = st.text_input("Access token", type="password", key="token-input")
        if st.button("Use token") and token:
            st.session_state["token"] = token
            st.rerun()


def run_pages() -> None:
    st.set_page_config(page_title="Modelhall", page_icon="🧪", layout="wide")
    params = st.query_params
    api = GalleryAPI(REGISTRY, viewer(), GALLERY, public=PUBLIC_REGISTRY)
    try:
        if params.get("share"):
            shared_page.render(api, params["share"])
            return
        account(api)
        if params.get("model"):
            model_page.render(api, params["model"])
        else:
            browse.render(api, mine=bool(params.get("mine")))
    except RegistryUnreachable as error:
        st.error(f"The registry cannot be reached right now. {error}")
    except GalleryError as error:
        st.error(str(error))


run_pages()
