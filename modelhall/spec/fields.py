"""Typed inputs and outputs of a model, one class per type.

Each input and output is a tagged union member selected by ``type``, so a spec is
parsed once into precise objects before anything runs (the way cog parses a
predictor's signature).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelhall.spec.paths import inside_bundle

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
              "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(value: int | str) -> int:
    """Bytes from ``1048576``, ``"10MB"``, ``"4Gi"`` or ``"512 KiB"``."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = SIZE_PATTERN.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 10MB or 4Gi")
    number, unit = match.groups()
    return int(float(number) * SIZE_UNITS[(unit or "").upper()])


class NamedField(BaseModel):
    """What every input and output has: a name the model sees, and words for people."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=IDENTIFIER)
    label: str | None = None
    description: str | None = None

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()


class InputBase(NamedField):
    required: bool = True


class TextInput(InputBase):
    type: Literal["text"]
    default: str | None = None
    max_length: int | None = Field(default=None, gt=0)
    multiline: bool = False

    @model_validator(mode="after")
    def _default_fits(self) -> TextInput:
        if self.default is not None and self.max_length and len(self.default) > self.max_length:
            raise ValueError(f"default is longer than max_length ({self.max_length})")
        return self


class _Bounded(InputBase):
    @model_validator(mode="after")
    def _bounds_are_consistent(self) -> _Bounded:
        low, high, default = self.min, self.max, self.default  # type: ignore[attr-defined]
        if low is not None and high is not None and low > high:
            raise ValueError(f"min ({low}) is greater than max ({high})")
        if default is not None and ((low is not None and default < low) or (high is not None and default > high)):
            raise ValueError(f"default ({default}) is outside min..max")
        return self


class NumberInput(_Bounded):
    type: Literal["number"]
    default: float | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = Field(default=None, gt=0)


class IntegerInput(_Bounded):
    type: Literal["integer"]
    default: int | None = None
    min: int | None = None
    max: int | None = None
    step: int | None = Field(default=None, gt=0)


class BooleanInput(InputBase):
    type: Literal["boolean"]
    default: bool | None = None


class ChoiceInput(InputBase):
    type: Literal["choice"]
    choices: list[str] = Field(min_length=1)
    default: str | list[str] | None = None
    multiple: bool = False

    @model_validator(mode="after")
    def _default_is_a_choice(self) -> ChoiceInput:
        defaults = self.default if isinstance(self.default, list) else [self.default]
        unknown = [d for d in defaults if d is not None and d not in self.choices]
        if unknown:
            raise ValueError(f"default {unknown[0]!r} is not one of the choices")
        return self


class FileInputBase(InputBase):
    """A file-like input; ``destination`` is where the command adapter writes it."""

    accept: list[str] = Field(default_factory=list, description="extensions (.png) or MIME types (image/*)")
    max_size: int | None = Field(default=None, description="bytes, or a size such as 10MB")
    destination: str | None = None

    @field_validator("max_size", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        return None if value is None else parse_size(value)

    @field_validator("destination")
    @classmethod
    def _in_bundle(cls, value: str | None) -> str | None:
        return None if value is None else inside_bundle(value)


class ImageInput(FileInputBase):
    type: Literal["image"]


class AudioInput(FileInputBase):
    type: Literal["audio"]


class VideoInput(FileInputBase):
    type: Literal["video"]


class FileInput(FileInputBase):
    type: Literal["file"]


class JsonInput(InputBase):
    type: Literal["json"]
    default: Any = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")


FILE_INPUTS = (ImageInput, AudioInput, VideoInput, FileInput)

Input = Annotated[
    Union[TextInput, NumberInput, IntegerInput, BooleanInput, ChoiceInput,
          ImageInput, AudioInput, VideoInput, FileInput, JsonInput],
    Field(discriminator="type"),
]


class OutputBase(NamedField):
    path: str | None = Field(default=None, description="file or folder the command adapter reads it from")

    @field_validator("path")
    @classmethod
    def _in_bundle(cls, value: str | None) -> str | None:
        return None if value is None else inside_bundle(value)


class TextOutput(OutputBase):
    type: Literal["text"]


class NumberOutput(OutputBase):
    type: Literal["number"]


class JsonOutput(OutputBase):
    type: Literal["json"]


class LabelOutput(OutputBase):
    type: Literal["label"]
    top_k: int | None = Field(default=None, gt=0)


class ImageOutput(OutputBase):
    type: Literal["image"]


class AudioOutput(OutputBase):
    type: Literal["audio"]


class VideoOutput(OutputBase):
    type: Literal["video"]


class FileOutput(OutputBase):
    type: Literal["file"]


class MarkdownOutput(OutputBase):
    type: Literal["markdown"]


Output = Annotated[
    Union[TextOutput, NumberOutput, JsonOutput, LabelOutput, ImageOutput,
          AudioOutput, VideoOutput, FileOutput, MarkdownOutput],
    Field(discriminator="type"),
]

INPUT_TYPES = ("text", "number", "integer", "boolean", "choice", "image", "audio", "video", "file", "json")
OUTPUT_TYPES = ("text", "number", "json", "label", "image", "audio", "video", "file", "markdown")
