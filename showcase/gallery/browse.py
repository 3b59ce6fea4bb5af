"""The browse page: the models the viewer may see, as cards, with search, filters and pages."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import streamlit as st

from modelhall.showcase.gallery.api import GalleryAPI, Viewer

PAGE_SIZE = 24
FACETS_TTL_SECONDS = 60
# A tile per task family for models without an example image: plain shapes, no emoji font needed.
TILE_COLOURS = {"image": "#5b8def", "text": "#e8833a", "audio": "#3aa876", "video": "#b35bd6"}
# The tile names the model (its initial, large; its name; its task), so that two models of one task differ.
TILE = ("<div style='height:150px;border-radius:8px;background:{colour};display:flex;flex-direction:column;"
        "align-items:center;justify-content:center;color:white;font-family:sans-serif;text-align:center;"
        "padding:0 1rem'><div style='font:700 3rem sans-serif;line-height:1'>{initial}</div>"
        "<div style='font-weight:600;margin-top:.4rem'>{name}</div><div style='font-size:.85rem;opacity:.85'>{task}"
        "</div></div>")
SORTS = {"recent": "Recently updated", "runs": "Most run", "name": "Name"}


FACET_FILTERS = (("Task", "task", "task"), ("Framework", "framework", "framework"), ("License", "license", "license"),
                 ("Input type", "input_type", "input_types"), ("Output type", "output_type", "output_types"))
ANY = "any"


def current_filters() -> dict[str, Any]:
    """The listing's query parameters, as the sidebar's widgets last set them.

    Read from the session rather than from the widgets, so that the cards can be drawn
    before the widgets: the page shows models first and its filters a moment later.
    """
    state = st.session_state
    chosen: dict[str, Any] = {"q": state.get("q", ""), "namespace": state.get("owner", "").strip().lower(),
                              "sort": state.get("sort", "recent")}
    for _, key, _ in FACET_FILTERS:
        value = state.get(f"filter-{key}", ANY)
        chosen[key] = None if value == ANY else value
    return chosen


def draw_filters(api: GalleryAPI) -> None:
    """The sidebar's search box and filters (their values: :func:`current_filters`)."""
    facets = cached_facets(api)
    sidebar = st.sidebar
    sidebar.text_input("Search", placeholder="name, description, tags, model card", key="q")
    sidebar.text_input("Owner", placeholder="a user or organisation", key="owner")
    for label, key, facet in FACET_FILTERS:
        options = facets.get(facet, [])
        if options:
            sidebar.selectbox(label, [ANY, *options], key=f"filter-{key}")
    sidebar.radio("Sort by", list(SORTS), format_func=SORTS.__getitem__, key="sort")


def task_tile(task: str | None, name: str) -> str:
    """A picture for a model without an example image: its task family's colour, its initial and name."""
    family = next((family for family in TILE_COLOURS if task and task.startswith(family)), None)
    short = name.rpartition("/")[2]
    return TILE.format(colour=TILE_COLOURS.get(family or "", "#7a7f8c"), initial=html.escape(short[:1].upper()),
                       name=html.escape(short), task=html.escape((task or "no task").replace("-", " ")))


def cached_facets(api: GalleryAPI) -> dict[str, list[str]]:
    """The filter values change only with pushes: asked for once a minute per viewer (every anonymous
    visitor is the same viewer), not on every page load or rerun that a click causes."""
    return _facets_of(api, api.viewer)


@st.cache_data(ttl=FACETS_TTL_SECONDS, max_entries=1000, show_spinner=False)
def _facets_of(_api: GalleryAPI, viewer: Viewer) -> dict[str, list[str]]:
    """``viewer`` is the cache's key (the facets count only what it may see); ``_api`` is not hashed."""
    return _api.facets()


def _age(moment: str) -> str:
    seconds = (datetime.now().astimezone() - datetime.fromisoformat(moment)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


GRID = ("<div style='display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:1rem'>{cards}</div>")
CARD = ("<div style='border:1px solid #ddd;border-radius:8px;padding:.8rem'>{picture}"
        "<p style='margin:.6rem 0 .2rem'><a href='?model={name}' target='_self'><b>{name}</b></a></p>"
        "<p style='color:#666;font-size:.85rem;margin:0'>{facts}</p>"
        "<p style='color:#666;font-size:.85rem;margin:0'>{signature}</p></div>")
PICTURE = "<img src='{src}' alt='example of {name}' style='width:100%;height:150px;object-fit:contain'>"


def card(api: GalleryAPI, model: dict[str, Any]) -> str:
    name = html.escape(model["name"], quote=True)
    picture = (PICTURE.format(src=html.escape(api.browser_url + model["thumbnail"], quote=True), name=name)
               if model["thumbnail"] else task_tile(model["task"], model["name"]))
    facts = [model["task"] or "no task", model["framework"], f"{model['run_count']} runs",
             f"updated {_age(model['updated_at'])}", "" if model["visibility"] == "public" else model["visibility"]]
    signature = (f"{', '.join(model['input_types'])} → {', '.join(model['output_types'])}"
                 if model["input_types"] and model["output_types"] else "")
    return CARD.format(picture=picture, name=name, facts=html.escape(" · ".join(f for f in facts if f)),
                       signature=html.escape(signature))


def render(api: GalleryAPI, mine: bool = False) -> None:
    show_models(api, mine)
    draw_filters(api)


def show_models(api: GalleryAPI, mine: bool) -> None:
    chosen = current_filters()
    if st.session_state.get("filters") != chosen:  # other filters: back to the first page
        st.session_state["filters"], st.session_state["page"] = chosen, 0
    page_number = int(st.session_state.get("page", 0))
    found = api.models(**chosen, mine=mine or None, limit=PAGE_SIZE, offset=page_number * PAGE_SIZE)
    st.title("My models" if mine else "Models")
    if not found.items:
        if any(value for key, value in chosen.items() if key != "sort"):
            st.info("No model matches these filters. Try fewer words or another filter.")
        else:
            st.info("No models here yet. Push one with `modelhall push`, or log in to see yours.")
        return
    first, last = page_number * PAGE_SIZE + 1, page_number * PAGE_SIZE + len(found.items)
    st.caption(f"{first}–{last} of {found.total} models")
    # One block of HTML for the whole grid: the page appears in one piece, not element by element.
    # st.html, not st.markdown: the browser spends ~0.4 s running 24 cards' HTML through Markdown.
    st.html(GRID.format(cards="".join(card(api, model) for model in found.items)))
    previous, _, following = st.columns([1, 4, 1])
    if page_number > 0 and previous.button("← Previous"):
        st.session_state["page"] = page_number - 1
        st.rerun()
    if last < found.total and following.button("Next →"):
        st.session_state["page"] = page_number + 1
        st.rerun()
