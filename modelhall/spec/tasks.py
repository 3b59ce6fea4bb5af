"""Inputs and outputs a Hugging Face pipeline task implies, for specs that give only ``task``."""

from __future__ import annotations

from typing import Any

TASK_DEFAULTS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "text-generation": (
        [{"name": "prompt", "type": "text", "label": "Prompt", "multiline": True},
         {"name": "max_new_tokens", "type": "integer", "label": "Max new tokens", "min": 1, "max": 512, "default": 64,
          "required": False}],
        [{"name": "text", "type": "text", "label": "Generated text"}],
    ),
    "text2text-generation": ([{"name": "text", "type": "text", "multiline": True}], [{"name": "text", "type": "text"}]),
    "summarization": ([{"name": "text", "type": "text", "multiline": True}], [{"name": "summary", "type": "text"}]),
    "translation": ([{"name": "text", "type": "text", "multiline": True}], [{"name": "translation", "type": "text"}]),
    "text-classification": ([{"name": "text", "type": "text"}], [{"name": "label", "type": "label"}]),
    "fill-mask": ([{"name": "text", "type": "text"}], [{"name": "label", "type": "label"}]),
    "image-classification": ([{"name": "image", "type": "image"}], [{"name": "label", "type": "label"}]),
    "image-to-text": ([{"name": "image", "type": "image"}], [{"name": "text", "type": "text"}]),
    "automatic-speech-recognition": ([{"name": "audio", "type": "audio"}], [{"name": "text", "type": "text"}]),
}


def with_task_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Fill in the inputs and outputs of a Hugging Face spec that names only its task."""
    runtime = data.get("runtime")
    if not isinstance(runtime, dict) or runtime.get("adapter") != "huggingface":
        return data
    defaults = TASK_DEFAULTS.get(str(data.get("task")))
    if defaults is None:
        return data
    inputs, outputs = defaults
    return {**data, "inputs": data.get("inputs") or inputs, "outputs": data.get("outputs") or outputs}
