"""The Modelhall gallery: ``streamlit run showcase/gallery/app.py`` (``make demo`` starts it).

Pages, chosen by the URL: the browse page (``/``), a model (``?model=owner/name``), what a
share link opens (``?share=mhs_…``) and the viewer's own models (``?mine=1``). Everything
comes from the registry's REST API (``MODELHALL_URL``) as the viewer: the registry session
cookie the browser sends along, or an access token pasted in the sidebar.
"""

from __future__ import annotations

import os

import httpx
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from modelhall.showcase.gallery import browse, model_page, shared_page
from modelhall.showcase.gallery.api import SESSION_COOKIE, GalleryAPI, GalleryError, RegistryUnreachable, Viewer

REGISTRY = os.environ.get("MODELHALL_URL", "http://127.0.0.1:8600").rstrip("/")
PUBLIC_REGISTRY = os.environ.get("MODELHALL_PUBLIC_URL", REGISTRY).rstrip("/")
GALLERY = os.environ.get("MODELHALL_GALLERY_URL", "http://127.0.0.1:8501").rstrip("/")
PROVIDERS_TTL_SECONDS = 300


def viewer() -> Viewer:
    params = st.query_params
    cookie = st.context.cookies.get(SESSION_COOKIE)  # (Streamlit's AppTest hands out a mock here)
    return Viewer(session_cookie=cookie if isinstance(cookie, str) else None, token=st.session_state.get("token"),
                  share=params.get("share"))


@st.cache_data(ttl=PROVIDERS_TTL_SECONDS, show_spinner=False)
def login_providers(_api: GalleryAPI, registry: str) -> list[dict[str, str]]:
    """The registry's login providers, part of its configuration: asked for every few minutes, not per page."""
    return _api.providers()


NO_PROVIDER = ("No login provider is configured on this registry (`MODELHALL_OIDC_PROVIDERS`). To log in, open a "
               "one-time link made on the server with `modelhall admin login-link USER` (`make demo` prints one "
               "for `demo`), or paste an access token below.")


def navigate(sidebar: DeltaGenerator, label: str, query: dict[str, str]) -> None:
    """A link-like button to another page of the gallery, in this tab and this session (a pasted token
    stays; st.markdown's links open a new tab, and a plain link would start a new session)."""
    if sidebar.button(label, type="tertiary", key=f"navigate-{label}"):
        st.query_params.from_dict(query)
        st.rerun()


def account(api: GalleryAPI, sidebar: DeltaGenerator) -> None:
    """Who is looking, and how to log in or out (in ``sidebar``, a place at the sidebar's top)."""
    user = api.whoami()
    navigate(sidebar, "All models", {})
    if user:
        sidebar.markdown(f"Logged in as **{user}**")
        navigate(sidebar, "My models", {"mine": "1"})
        if st.session_state.get("token"):
            if sidebar.button("Forget the token"):
                del st.session_state["token"]
                st.rerun()
        else:
            sidebar.link_button("Log out", f"{api.browser_url}/auth/logout?next={GALLERY}/")
        return
    providers = login_providers(api, api.registry)
    for provider in providers:
        sidebar.link_button(f"Log in with {provider['name']}",
                            f"{api.browser_url}{provider['login']}?next={GALLERY}/")
    if not providers:
        sidebar.caption(NO_PROVIDER)
    with sidebar.expander("Log in with an access token"):
        token = st.text_input("Access token", type="password", key="token-input")
        if st.button("Use token") and token:
            st.session_state["token"] = token
            st.rerun()


@st.cache_resource
def registry_connections() -> httpx.HTTPTransport:
    """Keep-alive connections to the registry, shared by every page this process renders."""
    return httpx.HTTPTransport()


def run_pages() -> None:
    st.set_page_config(page_title="Modelhall", page_icon="🧪", layout="wide")
    params = st.query_params
    api = GalleryAPI(REGISTRY, viewer(), GALLERY, public=PUBLIC_REGISTRY, transport=registry_connections())
    try:
        if params.get("share"):
            shared_page.render(api, params["share"])
            return
        account_place = st.sidebar.container()
        if params.get("model"):
            model_page.render(api, params["model"])
        else:
            browse.render(api, mine=bool(params.get("mine")))
        account(api, account_place)  # after the page: what the viewer came for is drawn first
    except RegistryUnreachable as error:
        st.error(f"The registry cannot be reached right now. {error}")
    except GalleryError as error:
        st.error(str(error))


run_pages()
