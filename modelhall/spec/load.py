"""Reading ``modelhall.yaml`` into a :class:`Spec`, with errors a person can act on.

Every problem names the field path (``inputs[1].type``) and, when the spec came from
YAML, its line: ``modelhall.yaml:14: inputs[1].type: 'picture' is not one of text, …``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelhall.spec.fields import INPUT_TYPES, OUTPUT_TYPES
from modelhall.spec.model import Spec
from modelhall.spec.paths import leaves_bundle

SPEC_FILENAME = "modelhall.yaml"
MAX_SHOWN_VALUE = 40
MAX_SPEC_BYTES = 1024**2
SUB_LOCATION = re.compile(r"^((?:\[\d+\])(?:\.\w+|\[\d+\])*): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class SpecProblem:
    path: str
    message: str
    line: int | None = None

    def render(self, source: str | None = None) -> str:
        where = f"{source}:{self.line}: " if source and self.line else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class SpecError(ValueError):
    """A spec that cannot be used, with one :class:`SpecProblem` per wrong field."""

    def __init__(self, problems: Sequence[SpecProblem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(problem.render(source) for problem in self.problems))


def load_spec_file(path: Path) -> Spec:
    """Parse a ``modelhall.yaml`` (or a bundle directory holding one), whose paths must all stay inside
    the bundle once its symbolic links are followed; the spec file itself too."""
    if path.is_dir():
        path = path / SPEC_FILENAME
    bundle = path.parent
    if leaves_bundle(bundle, path.name) or (path.exists() and not path.is_file()):
        raise SpecError([SpecProblem("", f"{SPEC_FILENAME} must be a file in the bundle, not a link out of it")])
    try:
        with path.open("rb") as spec_file:
            raw = spec_file.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([SpecProblem("", f"no {SPEC_FILENAME} found at {path}")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([SpecProblem("", f"{SPEC_FILENAME} is larger than {MAX_SPEC_BYTES // 1024} KiB")], path.name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecProblem("", f"{SPEC_FILENAME} is not UTF-8 text")], path.name) from None
    spec, root = _parse_yaml(text, path.name)
    escaping = [SpecProblem(_render_path(loc), "leads outside the bundle through a symbolic link; name a file in it",
                            _line_of(root, loc))
                for loc, relative in spec.bundle_paths() if leaves_bundle(bundle, relative)]
    if escaping:
        raise SpecError(escaping, path.name)
    return spec


def parse_spec_yaml(text: str, source: str = SPEC_FILENAME) -> Spec:
    return _parse_yaml(text, source)[0]


def _parse_yaml(text: str, source: str) -> tuple[Spec, yaml.Node | None]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(error, "problem", None) or "is not valid YAML"
        raise SpecError([SpecProblem("", f"invalid YAML: {problem}", line)], source) from None
    return _validate(data, source, root), root


def parse_spec_json(data: bytes | str | dict[str, Any], source: str = "spec") -> Spec:
    """Parse the JSON form kept as a bundle's OCI config blob."""
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise SpecError([SpecProblem("", f"invalid JSON: {error}")], source) from None
    return _validate(data, source, None)


def _validate(data: Any, source: str, root: yaml.Node | None) -> Spec:
    if not isinstance(data, dict):
        raise SpecError([SpecProblem("", "the spec must be a mapping of keys to values", 1 if root else None)], source)
    try:
        return Spec.model_validate(data)
    except ValidationError as error:
        problems = [_problem(detail, root) for detail in error.errors(include_url=False)]
        raise SpecError(problems, source) from None


def _problem(detail: dict[str, Any], root: yaml.Node | None) -> SpecProblem:
    loc = _strip_union_tags(detail["loc"])
    kind = detail["type"]
    ctx = detail.get("ctx", {})
    if kind == "union_tag_invalid":
        loc = (*loc, "type")
        allowed = OUTPUT_TYPES if loc and loc[0] == "outputs" else INPUT_TYPES
        message = f"{_shown(ctx.get('tag'))} is not one of {', '.join(allowed)}"
    elif kind == "union_tag_not_found":
        loc = (*loc, "type")
        message = "is required"
    elif kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    elif kind == "literal_error":
        allowed = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        message = f"{_shown(detail.get('input'))} is not one of {allowed}"
    else:
        message = detail["msg"].removeprefix("Value error, ")
        deeper = SUB_LOCATION.match(message)
        if deeper:  # a validator of a list that names the item it refuses: "[0].photo: …"
            loc = (*loc, *(int(part) if part.isdigit() else part for part in re.findall(r"\w+", deeper[1])))
            message = deeper[2]
    return SpecProblem(_render_path(loc), message, _line_of(root, loc))


def _strip_union_tags(loc: Sequence[Any]) -> tuple[Any, ...]:
    """Drop the tag pydantic adds after a list index in a tagged union (``inputs.0.number.min``)."""
    parts: list[Any] = []
    for part in loc:
        if isinstance(part, str) and parts and isinstance(parts[-1], int) and part in (*INPUT_TYPES, *OUTPUT_TYPES):
            continue
        parts.append(part)
    return tuple(parts)


def _render_path(loc: Sequence[Any]) -> str:
    rendered = ""
    for part in loc:
        rendered += f"[{part}]" if isinstance(part, int) else (f".{part}" if rendered else str(part))
    return rendered


def _shown(value: Any) -> str:
    """A short repr of user input: errors never echo long or raw content back."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[: MAX_SHOWN_VALUE - 4] + "…'"


def _line_of(root: yaml.Node | None, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the deepest YAML node along ``loc`` that exists."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None
