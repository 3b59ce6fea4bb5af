"""modelhall.yaml: typed specs, the MLC paper's config, and errors that name the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelhall.spec import SpecError, load_spec_file, parse_spec_json, parse_spec_yaml
from modelhall.spec.fields import INPUT_TYPES, OUTPUT_TYPES, parse_size

EVERY_TYPE = """
name: every-type
runtime: {adapter: python, entrypoint: predict.py:predict}
inputs:
  - {name: prompt, type: text, max_length: 200, default: hi}
  - {name: strength, type: number, min: 0, max: 1, step: 0.1, default: 0.5}
  - {name: steps, type: integer, min: 1, max: 50}
  - {name: fast, type: boolean, default: true}
  - {name: style, type: choice, choices: [a, b], default: a}
  - {name: photo, type: image, accept: [.png, image/jpeg], max_size: 5MB}
  - {name: voice, type: audio}
  - {name: clip, type: video}
  - {name: document, type: file}
  - {name: options, type: json}
outputs:
  - {name: t, type: text}
  - {name: n, type: number}
  - {name: j, type: json}
  - {name: l, type: label, top_k: 3}
  - {name: i, type: image}
  - {name: a, type: audio}
  - {name: v, type: video}
  - {name: f, type: file}
  - {name: m, type: markdown}
examples: [{prompt: hello, steps: 3}]
resources: {cpu: 2, memory: 4Gi, gpu: {count: 1, type: a100}}
scaling: {min: 0, max: 2, idle_timeout: 60}
"""

CYCLEGAN_PAPER_CONFIG = """
name: cyclegan
language: python-3.x
framework: pytorch
description: Horse to zebra translation with CycleGAN
version: 1.0
model:
  fileType: folder
  path: ./
  command: python test.py --dataroot ./datasets/input --name horse2zebra_pretrained --model test --no_dropout
  input:
    type: download
    download_destination: ./datasets/input
  output:
    type: png
    path: ./results/horse2zebra_pretrained/test_latest/images
package:
  type: pip
  requirements_file: requirements.txt
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml(text)
    return str(caught.value).splitlines()


def test_every_input_and_output_type_is_accepted() -> None:
    spec = parse_spec_yaml(EVERY_TYPE)
    assert [f.type for f in spec.inputs] == list(INPUT_TYPES)
    assert [f.type for f in spec.outputs] == list(OUTPUT_TYPES)
    assert spec.inputs[5].max_size == 5_000_000
    assert spec.resources.memory == 4 * 1024**3
    assert spec.resources.gpu.count == 1


def test_json_form_round_trips() -> None:
    spec = parse_spec_yaml(EVERY_TYPE)
    assert parse_spec_json(json.dumps(spec.to_json_dict())) == spec


def test_unknown_input_type_names_field_line_and_choices() -> None:
    text = EVERY_TYPE.replace("{name: voice, type: audio}", "{name: voice, type: picture}")
    assert problems_of(text) == [
        "modelhall.yaml:11: inputs[6].type: 'picture' is not one of "
        "text, number, integer, boolean, choice, image, audio, video, file, json"
    ]


@pytest.mark.parametrize(("change", "expected"), [
    (("min: 0, max: 1, step", "min: 2, max: 1, step"), "inputs[1]: min (2.0) is greater than max (1.0)"),
    (("choices: [a, b], default: a", "choices: [a, b], default: c"), "inputs[4]: default 'c' is not one of the choices"),
    (("max_size: 5MB", "max_size: lots"), "inputs[5].max_size: 'lots' is not a size such as 10MB or 4Gi"),
    (("{name: t, type: text}", "{name: t, type: text, colour: red}"), "outputs[0].colour: is not a known field"),
    (("{name: steps, type: integer", "{name: prompt, type: integer"), "inputs: the name 'prompt' is used twice"),
    (("examples: [{prompt: hello", "examples: [{nope: hello"), "examples[0] names 'nope', which is not an input"),
    (("scaling: {min: 0, max: 2", "scaling: {min: 3, max: 2"), "scaling: min (3) is greater than max (2)"),
    (("adapter: python, entrypoint: predict.py:predict", "adapter: cobol"),
     "runtime.adapter: 'cobol' is not one of python, command, huggingface"),
])
def test_invalid_field_is_named(change: tuple[str, str], expected: str) -> None:
    problems = problems_of(EVERY_TYPE.replace(*change))
    assert any(problem.endswith(expected) for problem in problems), problems
    assert all(problem.startswith("modelhall.yaml:") for problem in problems)


def test_missing_required_fields() -> None:
    assert problems_of("description: nothing else\n") == [
        "modelhall.yaml:1: name: is required", "modelhall.yaml:1: runtime: is required"]


def test_python_adapter_needs_an_entrypoint() -> None:
    problems = problems_of("name: x\nruntime: {adapter: python}\n")
    assert problems == ["modelhall.yaml:2: runtime: the python adapter needs an entrypoint such as predict.py:predict"]


def test_broken_yaml_gives_a_line_not_a_traceback() -> None:
    assert problems_of("name: x\nruntime: [unclosed\n")[0].startswith("modelhall.yaml:3: invalid YAML")


def test_long_input_is_not_echoed_whole() -> None:
    problems = problems_of(EVERY_TYPE.replace("type: picture", "").replace("type: audio", "type: " + "x" * 500))
    assert all(len(problem) < 300 for problem in problems)


def test_paper_cyclegan_config_loads_as_command_adapter() -> None:
    spec = parse_spec_yaml(CYCLEGAN_PAPER_CONFIG)
    assert spec.runtime.adapter == "command"
    assert spec.runtime.command.startswith("python test.py --dataroot ./datasets/input")
    assert spec.version == "1.0"
    assert spec.language == "python-3.x"
    assert spec.package.requirements == "requirements.txt"
    [photo] = spec.inputs
    assert (photo.type, photo.destination) == ("file", "./datasets/input")
    [result] = spec.outputs
    assert (result.type, result.path) == ("image", "./results/horse2zebra_pretrained/test_latest/images")


def test_paper_config_with_stdout_output_and_flag_input() -> None:
    spec = parse_spec_yaml("name: gpt2\nmodel:\n  command: python gen.py\n  input: {type: flag}\n"
                           "  output: {type: stdout}\n")
    assert [(f.name, f.type) for f in spec.inputs] == [("flags", "text")]
    assert [(f.name, f.type, f.path) for f in spec.outputs] == [("output", "text", None)]


@pytest.mark.parametrize(("text", "size"), [("10MB", 10_000_000), ("4Gi", 4 * 1024**3), ("512 KiB", 524288),
                                            ("100", 100), ("1.5G", 1_500_000_000)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_schema_command_prints_a_json_schema() -> None:
    result = subprocess.run([sys.executable, "-m", "modelhall", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(result.stdout)
    assert set(schema["required"]) == {"name", "runtime"}
    assert "ImageInput" in schema["$defs"]


@pytest.mark.parametrize(("change", "expected"), [
    ("package: {requirements_file: /proc/self/environ}",
     "modelhall.yaml:3: package.requirements_file: '/proc/self/environ' is an absolute path"),
    ("package: {requirements: ../../secret.key}",
     "modelhall.yaml:3: package.requirements: '../../secret.key' leaves the bundle through '..'"),
    ("package: {python: ./python.sh}", "modelhall.yaml:3: package.python: './python.sh' is not a Python version"),
    ("package: {python: 3.10}", "modelhall.yaml:3: package.python: write the version as text, such as '3.10'"),
    ("files: {weights: [../*.bin]}", "modelhall.yaml:3: files.weights: '../*.bin' leaves the bundle"),
    ("examples: [{photo: /etc/shadow}]", "modelhall.yaml:3: examples[0].photo: '/etc/shadow' is an absolute path"),
    ("outputs: [{name: o, type: image, path: /srv/x}]", "modelhall.yaml:3: outputs[0].path: '/srv/x' is an absolute"),
])
def test_a_path_outside_the_bundle_is_refused_by_field(change: str, expected: str) -> None:
    text = ("name: paths\nruntime: {adapter: python, entrypoint: predict.py:predict}\n" + change + "\n"
            + ("inputs: [{name: photo, type: image}]\n" if "examples" in change else ""))
    assert [problem for problem in problems_of(text) if problem.startswith(expected)], problems_of(text)


@pytest.mark.parametrize(("runtime", "field"), [
    ("{adapter: python, entrypoint: ../lib/predict.py:predict}", "runtime.entrypoint"),
    ("{adapter: command, command: run, workdir: /opt}", "runtime.workdir"),
    ("{adapter: huggingface, model: ../models}", "runtime.model"),
    ("{adapter: huggingface, gguf_file: ../../x.gguf}", "runtime.gguf_file"),
])
def test_runtime_paths_stay_in_the_bundle(runtime: str, field: str) -> None:
    [problem] = problems_of(f"name: paths\nruntime: {runtime}\n")
    assert problem.startswith(f"modelhall.yaml:2: {field}: ")


def test_paths_inside_the_bundle_and_versions_are_accepted() -> None:
    spec = parse_spec_yaml("name: ok\nruntime: {adapter: python, entrypoint: src/predict.py:predict}\n"
                           "package: {requirements: ./deps/requirements.txt, python: '3.10'}\n"
                           "resources: {disk: 512Mi, processes: 32}\n")
    assert (spec.package.requirements, spec.package.python) == ("./deps/requirements.txt", "3.10")
    assert (spec.resources.disk, spec.resources.processes) == (512 * 1024**2, 32)


def test_a_link_out_of_the_bundle_is_refused_when_the_spec_is_loaded(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not for the demo")
    bundle = tmp_path / "bundle"
    (bundle / "examples").mkdir(parents=True)
    (bundle / "examples" / "cat.png").symlink_to(outside)
    (bundle / "modelhall.yaml").write_text("name: linked\nruntime: {adapter: python, entrypoint: predict.py:predict}\n"
                                           "inputs: [{name: photo, type: image}]\n"
                                           "examples:\n  - {photo: examples/cat.png}\n")
    with pytest.raises(SpecError) as refused:
        load_spec_file(bundle)
    assert str(refused.value) == ("modelhall.yaml:5: examples[0].photo: leads outside the bundle through a symbolic "
                                  "link; name a file in it")


def test_a_spec_file_that_links_out_of_the_bundle_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "settings.yaml"
    secret.write_text("name: the-registry-secret\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "modelhall.yaml").symlink_to(secret)
    with pytest.raises(SpecError) as refused:
        load_spec_file(bundle)
    assert "registry-secret" not in str(refused.value) and "not a link out of it" in str(refused.value)
