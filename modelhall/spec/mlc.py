"""The configuration file of the MLC paper, mapped onto the typed spec.

The paper's keys (``model.command``, ``model.input.type: download``,
``model.output.type: png``, ``package.requirements_file`` …) keep working: a config
written for it loads into the same :class:`~modelhall.spec.model.Spec` as a typed one.
"""

from __future__ import annotations

from typing import Any

OUTPUT_TYPE_BY_EXTENSION = {
    "stdout": "text", "txt": "text", "md": "markdown", "json": "json",
    "png": "image", "jpg": "image", "jpeg": "image", "gif": "image", "webp": "image", "bmp": "image",
    "wav": "audio", "mp3": "audio", "flac": "audio", "ogg": "audio",
    "mp4": "video", "webm": "video", "avi": "video",
}


def is_mlc_config(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and "runtime" not in data


def from_mlc_config(data: dict[str, Any]) -> dict[str, Any]:
    """Return the typed form of a paper-style config; unknown keys are left to fail validation."""
    typed = {key: value for key, value in data.items() if key != "model"}
    model = dict(data["model"])
    typed["runtime"] = {
        "adapter": "command",
        "command": model.pop("command", None) or model.pop("exec_cmd", None),
        "workdir": model.pop("path", None),
    }
    model.pop("exec_cmd", None)
    model.pop("fileType", None)
    if "input" in model:
        typed["inputs"] = _merge(typed.get("inputs"), _mlc_input(model.pop("input")), "destination")
    if "output" in model:
        typed["outputs"] = _merge(typed.get("outputs"), _mlc_output(model.pop("output")), "path")
    if model:
        typed["model"] = model  # leftover keys: reported as unknown fields under model
    return typed


def _merge(typed: Any, mapped: Any, location: str) -> Any:
    """Typed ``inputs``/``outputs`` win over the paper's single one, which lends them its location.

    So a paper-style config can say ``type: image`` where the paper could only say ``download``.
    """
    if not isinstance(typed, list) or not typed:
        return [mapped]
    first = typed[0]
    if isinstance(first, dict) and isinstance(mapped, dict) and mapped.get(location) and not first.get(location):
        return [{**first, location: mapped[location]}, *typed[1:]]
    return typed


def _mlc_input(section: Any) -> Any:
    if not isinstance(section, dict):
        return section
    kind = section.get("type")
    if kind == "download":
        return {"name": "input", "type": "file", "destination": section.get("download_destination")}
    if kind == "flag":
        return {"name": "flags", "type": "text", "required": False, "default": section.get("default", "")}
    return {"name": "input", "type": kind}


def _mlc_output(section: Any) -> Any:
    if not isinstance(section, dict):
        return section
    kind = str(section.get("type", "stdout")).lower().lstrip(".")
    typed = {"name": "output", "type": OUTPUT_TYPE_BY_EXTENSION.get(kind, "file")}
    if kind != "stdout":
        typed["path"] = section.get("path")
    return typed
