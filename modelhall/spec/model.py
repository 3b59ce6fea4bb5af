"""The whole ``modelhall.yaml``: what a model is, how it runs, what it takes and gives."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelhall.spec.fields import Input, Output, parse_size
from modelhall.spec.mlc import from_mlc_config, is_mlc_config
from modelhall.spec.tasks import with_task_defaults

NAME_PATTERN = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Runtime(_Section):
    adapter: Literal["python", "command", "huggingface"] = "python"
    entrypoint: str | None = Field(default=None, description="file.py:function or file.py:Class")
    command: str | None = Field(default=None, description="shell command for the command adapter")
    workdir: str | None = None
    model: str = Field(default=".", description="folder of the Hugging Face model inside the bundle")
    gguf_file: str | None = Field(default=None, description="a GGUF file in that folder to load the model from")
    timeout: float = Field(default=300, gt=0, description="seconds one prediction may take")
    network: bool = False

    @model_validator(mode="after")
    def _adapter_has_what_it_needs(self) -> Runtime:
        if self.adapter == "python":
            if not self.entrypoint:
                raise ValueError("the python adapter needs an entrypoint such as predict.py:predict")
            if ":" not in self.entrypoint:
                raise ValueError(f"entrypoint {self.entrypoint!r} must look like file.py:function")
        if self.adapter == "command" and not self.command:
            raise ValueError("the command adapter needs a command")
        return self


class Package(_Section):
    type: Literal["pip", "conda"] = "pip"
    requirements: str | None = Field(default=None, alias="requirements_file")
    python: str | None = Field(default=None, description="Python version, e.g. 3.11")


class Gpu(_Section):
    count: int = Field(default=0, ge=0)
    type: str | None = None
    cpu_fallback: bool = False


class Resources(_Section):
    cpu: float = Field(default=1, gt=0)
    memory: int = Field(default=2 * 1024**3, description="bytes, or a size such as 4Gi")
    gpu: Gpu = Gpu()

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_shorthand(cls, value: Any) -> Any:
        return {"count": value} if isinstance(value, int) else value


class Scaling(_Section):
    min: int = Field(default=0, ge=0)
    max: int = Field(default=1, ge=1)
    idle_timeout: float = Field(default=300, gt=0, description="seconds without a request before scaling to zero")
    concurrency: int = Field(default=4, ge=1, description="predictions one worker runs at once")
    queue: int = Field(default=16, ge=0, description="predictions that may wait for a free slot; beyond: 429")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Scaling:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class Files(_Section):
    weights: list[str] = Field(default_factory=list, description="globs of files packed as separate layers")


class Spec(_Section):
    """A parsed, validated ``modelhall.yaml``.

    The MLC paper's configuration (``model:`` with ``command``, ``input``, ``output``
    and ``package.requirements_file``) is accepted unchanged and mapped onto this form.
    """

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    version: str = "0.1.0"
    description: str = ""
    task: str | None = None
    framework: str | None = None
    language: str | None = None
    license: str | None = None
    tags: list[str] = Field(default_factory=list)
    runtime: Runtime
    package: Package = Package()
    inputs: list[Input] = Field(default_factory=list)
    outputs: list[Output] = Field(default_factory=list)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    resources: Resources = Resources()
    scaling: Scaling = Scaling()
    files: Files = Files()

    @model_validator(mode="before")
    @classmethod
    def _accept_mlc_config_and_task_defaults(cls, data: Any) -> Any:
        if is_mlc_config(data):
            data = from_mlc_config(data)
        return with_task_defaults(data) if isinstance(data, dict) else data

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value

    @field_validator("inputs", "outputs")
    @classmethod
    def _names_are_unique(cls, fields: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for field in fields:
            if field.name in seen:
                raise ValueError(f"the name {field.name!r} is used twice")
            seen.add(field.name)
        return fields

    @model_validator(mode="after")
    def _examples_name_inputs(self) -> Spec:
        names = {field.name for field in self.inputs}
        for index, example in enumerate(self.examples):
            unknown = sorted(set(example) - names)
            if unknown:
                raise ValueError(f"examples[{index}] names {unknown[0]!r}, which is not an input")
        return self

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
