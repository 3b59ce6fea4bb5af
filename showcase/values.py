"""Turning request values into what a model receives, and what it returns into responses.

Inputs are checked against the spec before the model sees them (type, required,
bounds, choices, length, file size and type) and fail with :class:`InputError`, which
names the field. Outputs are normalised first (text → str, label → {label: confidence},
image → PIL image, audio/video/file → path) and then rendered for JSON or for Gradio.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import mimetypes
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelhall.spec import Spec
from modelhall.spec import fields as f

FILE_TYPES = (f.ImageInput, f.AudioInput, f.VideoInput, f.FileInput)
MAX_SHOWN = 40


class InputError(ValueError):
    """A request value the spec does not allow; ``field`` names the input."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Upload:
    """A file sent in a request body: JSON base64 or a multipart part."""

    data: bytes
    filename: str | None = None


def parse_inputs(spec: Spec, raw: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Checked, typed inputs; file-like inputs become paths under ``workdir``."""
    unknown = sorted(set(raw) - {field.name for field in spec.inputs})
    if unknown:
        raise InputError(unknown[0], "is not an input of this model")
    parsed: dict[str, Any] = {}
    for field in spec.inputs:
        value = raw.get(field.name)
        if value is None or value == "":
            if getattr(field, "default", None) is not None:
                value = field.default  # type: ignore[union-attr]
            elif field.required:
                raise InputError(field.name, "is required")
            else:
                parsed[field.name] = None
                continue
        parsed[field.name] = _parse(field, value, workdir)
    return parsed


def coerce_text_values(spec: Spec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Values typed as text (form fields, ``-i name=value``) read as the numbers, booleans
    and JSON the spec expects; ``@path`` names a local file for a file-like input."""
    fields = {field.name: field for field in spec.inputs}
    converted = dict(inputs)
    for name, value in inputs.items():
        field = fields.get(name)
        if not isinstance(value, str) or field is None:
            continue
        if isinstance(field, FILE_TYPES) and value.startswith("@"):
            converted[name] = Path(value[1:])
        elif field.type in ("number", "integer", "boolean", "json"):
            try:
                converted[name] = json.loads(value)
            except ValueError:
                raise InputError(name, f"{value[:MAX_SHOWN]!r} is not a {field.type}") from None
    return converted


def _parse(field: Any, value: Any, workdir: Path) -> Any:
    if isinstance(field, f.TextInput):
        if not isinstance(value, str):
            raise InputError(field.name, "must be text")
        if field.max_length and len(value) > field.max_length:
            raise InputError(field.name, f"must be at most {field.max_length} characters")
        return value
    if isinstance(field, (f.NumberInput, f.IntegerInput)):
        return _parse_number(field, value)
    if isinstance(field, f.BooleanInput):
        if not isinstance(value, bool):
            raise InputError(field.name, "must be true or false")
        return value
    if isinstance(field, f.ChoiceInput):
        return _parse_choice(field, value)
    if isinstance(field, f.JsonInput):
        return _parse_json(field, value)
    return _parse_file(field, value, workdir)


def _parse_number(field: f.NumberInput | f.IntegerInput, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(field.name, "must be a number")
    if isinstance(field, f.IntegerInput):
        if isinstance(value, float) and not value.is_integer():
            raise InputError(field.name, "must be a whole number")
        value = int(value)
    elif not math.isfinite(value):
        raise InputError(field.name, "must be a finite number")
    if field.min is not None and value < field.min:
        raise InputError(field.name, f"must be at least {field.min}")
    if field.max is not None and value > field.max:
        raise InputError(field.name, f"must be at most {field.max}")
    return value


def _parse_choice(field: f.ChoiceInput, value: Any) -> str | list[str]:
    values = value if field.multiple and isinstance(value, list) else [value]
    for item in values:
        if item not in field.choices:
            shown = repr(item)[:MAX_SHOWN]
            raise InputError(field.name, f"{shown} is not one of {', '.join(field.choices)}")
    return list(values) if field.multiple else values[0]


def _parse_json(field: f.JsonInput, value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise InputError(field.name, "is not valid JSON") from None
    return value


def _parse_file(field: Any, value: Any, workdir: Path) -> Path:
    upload = _upload_of(field.name, value)
    if field.max_size is not None and len(upload.data) > field.max_size:
        raise InputError(field.name, f"is {len(upload.data)} bytes; at most {field.max_size} are accepted")
    name = Path(upload.filename or f"{field.name}{_guess_extension(field, upload.data)}").name
    _check_accepted(field, name)
    path = workdir / uuid.uuid4().hex[:8] / name  # a folder per file keeps the sender's file name
    path.parent.mkdir(parents=True)
    path.write_bytes(upload.data)
    if isinstance(field, f.ImageInput):
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            path.unlink()
            raise InputError(field.name, "is not an image that can be read") from None
    return path


def _upload_of(name: str, value: Any) -> Upload:
    """Accepts an :class:`Upload`, a local path (from Gradio), base64, a data URL, or {data, name}."""
    if isinstance(value, Upload):
        return value
    if isinstance(value, Path):
        return Upload(value.read_bytes(), value.name)
    if isinstance(value, dict) and isinstance(value.get("data"), str):
        return Upload(_b64(name, value["data"]), value.get("name"))
    if isinstance(value, str):
        if value.startswith("data:"):
            return Upload(_b64(name, value.partition(",")[2]))
        return Upload(_b64(name, value))
    raise InputError(name, "must be a file: base64 text, a data: URL, or {\"data\": …, \"name\": …}")


def _b64(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(name, "is not valid base64") from None


def _guess_extension(field: Any, data: bytes) -> str:
    if isinstance(field, f.ImageInput):
        try:
            with Image.open(io.BytesIO(data)) as image:
                return f".{(image.format or 'png').lower()}"
        except (UnidentifiedImageError, OSError):
            return ".png"
    return ""


def _check_accepted(field: Any, filename: str) -> None:
    if not field.accept:
        return
    extension = Path(filename).suffix.lower()
    mime = mimetypes.guess_type(filename)[0] or ""
    for accepted in field.accept:
        accepted = accepted.lower()
        if accepted == extension or accepted == mime or (accepted.endswith("/*") and mime.startswith(accepted[:-1])):
            return
    raise InputError(field.name, f"{extension or 'this file type'} is not accepted; use {', '.join(field.accept)}")


def normalise_outputs(spec: Spec, result: Any, workdir: Path) -> dict[str, Any]:
    """The model's return value as one normalised value per declared output.

    A model with one output may return the bare value; with several, a dict by name
    or a tuple in declaration order.
    """
    outputs = spec.outputs
    if len(outputs) == 1 and not (isinstance(result, dict) and set(result) == {outputs[0].name}):
        values = {outputs[0].name: result}
    elif isinstance(result, dict):
        values = result
    elif isinstance(result, (tuple, list)) and len(result) == len(outputs):
        values = {field.name: value for field, value in zip(outputs, result, strict=True)}
    else:
        raise TypeError(f"the model returned {type(result).__name__}; expected one value per output "
                        f"({', '.join(o.name for o in outputs)})")
    missing = [o.name for o in outputs if o.name not in values]
    if missing:
        raise TypeError(f"the model returned no value for {missing[0]!r}")
    return {o.name: _normalise(o, values[o.name], workdir) for o in outputs}


def _normalise(field: Any, value: Any, workdir: Path) -> Any:
    if isinstance(field, (f.TextOutput, f.MarkdownOutput)):
        return str(value)
    if isinstance(field, f.NumberOutput):
        return float(value)
    if isinstance(field, f.JsonOutput):
        json.dumps(value)  # fails now, with the model's value, rather than while responding
        return value
    if isinstance(field, f.LabelOutput):
        confidences = {str(value): 1.0} if isinstance(value, str) else {str(k): float(v) for k, v in value.items()}
        ranked = sorted(confidences.items(), key=lambda item: item[1], reverse=True)
        return dict(ranked[: field.top_k] if field.top_k else ranked)
    if isinstance(field, f.ImageOutput):
        return _as_image(value)
    return _as_path(field, value, workdir)


def _as_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        array = value
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).astype(np.uint8) if array.max() <= 1.0 else array.astype(np.uint8)
        return Image.fromarray(array)
    if isinstance(value, (str, Path)):
        with Image.open(value) as image:
            return image.copy()
    raise TypeError(f"an image output must be a PIL image, a numpy array or a path, not {type(value).__name__}")


def _as_path(field: Any, value: Any, workdir: Path) -> Path:
    if isinstance(value, (str, Path)) and Path(value).is_file():
        return Path(value)
    if isinstance(value, bytes):
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{uuid.uuid4().hex[:8]}-{field.name}"
        path.write_bytes(value)
        return path
    raise TypeError(f"a {field.type} output must be a path to a file or bytes")


def to_json(spec: Spec, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised outputs as JSON: files and images as ``{name, mime_type, data}`` with base64 data."""
    rendered: dict[str, Any] = {}
    for field in spec.outputs:
        value = outputs[field.name]
        if isinstance(value, Image.Image):
            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            rendered[field.name] = _file_json(f"{field.name}.png", "image/png", buffer.getvalue())
        elif isinstance(value, Path):
            mime = mimetypes.guess_type(value.name)[0] or "application/octet-stream"
            rendered[field.name] = _file_json(value.name, mime, value.read_bytes())
        elif isinstance(field, f.LabelOutput):
            top = next(iter(value), None)
            rendered[field.name] = {"label": top, "confidences": [{"label": k, "confidence": v} for k, v in value.items()]}
        else:
            rendered[field.name] = value
    return rendered


def _file_json(name: str, mime: str, data: bytes) -> dict[str, str]:
    return {"name": name, "mime_type": mime, "data": base64.b64encode(data).decode()}


def to_gradio(spec: Spec, outputs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Normalised outputs in the form Gradio's output components take, in declaration order."""
    return tuple(str(outputs[o.name]) if isinstance(outputs[o.name], Path) else outputs[o.name] for o in spec.outputs)


def request_schema(spec: Spec) -> dict[str, Any]:
    """JSON Schema of a ``POST /predict`` body for this spec."""
    properties = {field.name: _input_schema(field) for field in spec.inputs}
    required = [field.name for field in spec.inputs if field.required and getattr(field, "default", None) is None]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "required": ["inputs"], "additionalProperties": False,
        "properties": {"inputs": {"type": "object", "properties": properties, "required": required,
                                  "additionalProperties": False}},
    }


def _input_schema(field: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"title": field.display_label}
    if field.description:
        schema["description"] = field.description
    if isinstance(field, f.TextInput):
        schema["type"] = "string"
        if field.max_length:
            schema["maxLength"] = field.max_length
    elif isinstance(field, (f.NumberInput, f.IntegerInput)):
        schema["type"] = "integer" if isinstance(field, f.IntegerInput) else "number"
        schema.update({k: v for k, v in (("minimum", field.min), ("maximum", field.max)) if v is not None})
    elif isinstance(field, f.BooleanInput):
        schema["type"] = "boolean"
    elif isinstance(field, f.ChoiceInput):
        schema.update({"type": "array", "items": {"enum": field.choices}} if field.multiple else {"enum": field.choices})
    elif isinstance(field, FILE_TYPES):
        schema.update({"type": ["string", "object"], "contentEncoding": "base64",
                       "description": (field.description or "") + " (base64, a data: URL, or {data, name})"})
    if getattr(field, "default", None) is not None:
        schema["default"] = field.default
    return schema
