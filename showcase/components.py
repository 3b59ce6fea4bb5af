"""Each input and output type of the spec → the Gradio component that fits it.

Bounded numbers get a slider, up to four choices radio buttons (more: a dropdown),
files an upload of the matching kind; the spec's label, description, default and
constraints carry over.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from modelhall.spec import fields as f

MAX_RADIO_CHOICES = 4


def _common(field: Any) -> dict[str, Any]:
    return {"label": field.display_label}


def _with_info(field: Any) -> dict[str, Any]:
    return {**_common(field), "info": field.description}


def input_component(field: Any) -> gr.components.Component:
    if isinstance(field, f.TextInput):
        return gr.Textbox(value=field.default, lines=4 if field.multiline else 1, max_length=field.max_length,
                          **_with_info(field))
    if isinstance(field, (f.NumberInput, f.IntegerInput)):
        whole = isinstance(field, f.IntegerInput)
        step = field.step or (1 if whole else None)
        if field.min is not None and field.max is not None:
            return gr.Slider(minimum=field.min, maximum=field.max, step=step or (field.max - field.min) / 100,
                             value=field.default if field.default is not None else field.min,
                             precision=0 if whole else None, **_with_info(field))
        return gr.Number(value=field.default, minimum=field.min, maximum=field.max, step=step or 1,
                         precision=0 if whole else None, **_with_info(field))
    if isinstance(field, f.BooleanInput):
        return gr.Checkbox(value=bool(field.default), **_with_info(field))
    if isinstance(field, f.ChoiceInput):
        if not field.multiple and len(field.choices) <= MAX_RADIO_CHOICES:
            return gr.Radio(choices=field.choices, value=field.default, **_with_info(field))
        return gr.Dropdown(choices=field.choices, value=field.default, multiselect=field.multiple, **_with_info(field))
    if isinstance(field, f.ImageInput):
        return gr.Image(type="filepath", **_common(field))
    if isinstance(field, f.AudioInput):
        return gr.Audio(type="filepath", **_common(field))
    if isinstance(field, f.VideoInput):
        return gr.Video(**_common(field))
    if isinstance(field, f.FileInput):
        return gr.File(type="filepath", file_types=field.accept or None, **_common(field))
    assert isinstance(field, f.JsonInput)
    default = None if field.default is None else json.dumps(field.default, indent=2)
    return gr.Code(value=default, language="json", **_common(field))


def output_component(field: Any) -> gr.components.Component:
    builders: dict[type, Any] = {
        f.TextOutput: lambda: gr.Textbox(interactive=False, **_common(field)),
        f.NumberOutput: lambda: gr.Number(interactive=False, **_common(field)),
        f.JsonOutput: lambda: gr.JSON(**_common(field)),
        f.LabelOutput: lambda: gr.Label(num_top_classes=field.top_k, **_common(field)),
        f.ImageOutput: lambda: gr.Image(type="pil", format="png", interactive=False, **_common(field)),
        f.AudioOutput: lambda: gr.Audio(type="filepath", interactive=False, **_common(field)),
        f.VideoOutput: lambda: gr.Video(interactive=False, **_common(field)),
        f.FileOutput: lambda: gr.File(interactive=False, **_common(field)),
        f.MarkdownOutput: lambda: gr.Markdown(**_common(field)),
    }
    return builders[type(field)]()
