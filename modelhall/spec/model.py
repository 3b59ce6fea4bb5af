"""The whole ``modelhall.yaml``: what a model is, how it runs, what it takes and gives."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from modelhall.spec.fields import FILE_INPUTS, Input, Output, parse_size
from modelhall.spec.mlc import from_mlc_config, is_mlc_config
from modelhall.spec.paths import inside_bundle, python_version
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
    network: bool = Field(default=False, description="outbound network access, if the operator allows it")
    startup_timeout: float = Field(default=600, gt=0, description="seconds the model may take to start and load "
                                                                  "(on Kubernetes: its startupProbe)")

    @field_validator("workdir", "model", "gguf_file")
    @classmethod
    def _in_bundle(cls, value: str | None) -> str | None:
        return None if value is None else inside_bundle(value)

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_in_bundle(cls, value: str | None) -> str | None:
        if value is not None and ":" in value:
            inside_bundle(value.partition(":")[0])
        return value

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

    @field_validator("requirements")
    @classmethod
    def _in_bundle(cls, value: str | None) -> str | None:
        return None if value is None else inside_bundle(value)

    @field_validator("python", mode="before")
    @classmethod
    def _a_version(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"write the version as text, such as '3.10' (unquoted, YAML reads {value!r} as a number)")
        return python_version(value) if isinstance(value, str) else value


class Gpu(_Section):
    count: int = Field(default=0, ge=0)
    type: str | None = None
    cpu_fallback: bool = False


class Resources(_Section):
    cpu: float = Field(default=1, gt=0)
    memory: int = Field(default=2 * 1024**3, gt=0, description="bytes, or a size such as 4Gi")
    disk: int = Field(default=1024**3, gt=0, description="bytes of /tmp (in memory), or a size such as 512Mi")
    processes: int = Field(default=256, ge=16, le=4096, description="processes and threads, all together")
    gpu: Gpu = Gpu()

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
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

    @field_validator("weights")
    @classmethod
    def _in_bundle(cls, patterns: list[str]) -> list[str]:
        return [inside_bundle(pattern) for pattern in patterns]


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

    @field_validator("examples")
    @classmethod
    def _example_files_in_bundle(cls, examples: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        for (index, name), value in _example_files(info.data.get("inputs", []), examples).items():
            try:
                inside_bundle(value)
            except ValueError as error:
                raise ValueError(f"[{index}].{name}: {error}") from None
        return examples

    def bundle_paths(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Every path this spec names inside its bundle, relative to the bundle, with where it is named."""
        runtime, workdir = self.runtime, self.runtime.workdir or "."
        paths: list[tuple[tuple[str | int, ...], str]] = [(("runtime", "model"), runtime.model)]
        if self.package.requirements:
            paths.append((("package", "requirements_file"), self.package.requirements))
        if runtime.entrypoint:
            paths.append((("runtime", "entrypoint"), runtime.entrypoint.partition(":")[0]))
        if runtime.workdir:
            paths.append((("runtime", "workdir"), runtime.workdir))
        if runtime.gguf_file:
            paths.append((("runtime", "gguf_file"), f"{runtime.model}/{runtime.gguf_file}"))
        for index, field in enumerate(self.inputs):
            if getattr(field, "destination", None):
                paths.append((("inputs", index, "destination"), f"{workdir}/{field.destination}"))
        for index, output in enumerate(self.outputs):
            if output.path:
                paths.append((("outputs", index, "path"), f"{workdir}/{output.path}"))
        files = _example_files(self.inputs, self.examples)
        paths += [(("examples", index, name), value) for (index, name), value in files.items()]
        return paths

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _example_files(inputs: list[Any], examples: list[dict[str, Any]]) -> dict[tuple[int, str], str]:
    """The files the examples name, by (example, input): their values for file inputs."""
    files = {field.name for field in inputs if isinstance(field, FILE_INPUTS)}
    return {(index, name): value for index, example in enumerate(examples)
            for name, value in example.items() if name in files and isinstance(value, str)}
