"""The three model adapters on bundles written for the purpose: the paper's CycleGAN config, Hugging Face folders."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from model_bundles import png_bytes
from modelhall.adapters.models import ModelError, open_adapter
from modelhall.bundle.from_huggingface import HuggingFaceImportError, import_huggingface
from modelhall.showcase.runner import Health, ModelRunner
from modelhall.showcase.values import InputError
from modelhall.spec import load_spec_file, parse_spec_yaml

from test_spec import CYCLEGAN_PAPER_CONFIG

FAKE_CYCLEGAN = '''
"""Mimics CycleGAN's test.py: reads --dataroot, writes <name>_fake.png under results/<name>/test_latest/images."""
import argparse, pathlib
from PIL import Image, ImageOps
parser = argparse.ArgumentParser()
parser.add_argument("--dataroot"); parser.add_argument("--name"); parser.add_argument("--model")
parser.add_argument("--no_dropout", action="store_true")
args, _ = parser.parse_known_args()
out = pathlib.Path("results") / args.name / "test_latest" / "images"
out.mkdir(parents=True, exist_ok=True)
for path in sorted(pathlib.Path(args.dataroot).iterdir()):
    ImageOps.invert(Image.open(path).convert("RGB")).save(out / f"{path.stem}_fake.png")
    print("translated", path.name)
'''


@pytest.fixture
def cyclegan_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "cyclegan"
    bundle.mkdir()
    (bundle / "modelhall.yaml").write_text(CYCLEGAN_PAPER_CONFIG)
    (bundle / "test.py").write_text(FAKE_CYCLEGAN)
    return bundle


def loaded(bundle: Path, tmp_path: Path) -> ModelRunner:
    runner = ModelRunner(load_spec_file(bundle), bundle, tmp_path / "scratch")
    runner.load()
    assert runner.health is Health.READY, runner.error
    return runner


def test_paper_cyclegan_config_runs_through_the_command_adapter(cyclegan_bundle: Path, tmp_path: Path) -> None:
    runner = loaded(cyclegan_bundle, tmp_path)
    (tmp_path / "horse.png").write_bytes(png_bytes((5, 5), (10, 20, 30)))
    result = runner.predict({"input": tmp_path / "horse.png"}).outputs["output"]
    assert isinstance(result, Image.Image)
    assert result.getpixel((2, 2)) == (245, 235, 225)  # inverted by the "model"
    assert sorted(p.name for p in cyclegan_bundle.iterdir()) == ["modelhall.yaml", "test.py"]  # bundle untouched


def test_command_values_are_quoted_not_executed(tmp_path: Path) -> None:
    bundle = tmp_path / "echo"
    bundle.mkdir()
    (bundle / "modelhall.yaml").write_text(
        "name: echo\nruntime: {adapter: command, command: 'echo {text}'}\n"
        "inputs: [{name: text, type: text}, {name: flags, type: text, required: false}]\n"
        "outputs: [{name: said, type: text}]\n")
    runner = loaded(bundle, tmp_path)
    said = runner.predict({"text": "hi; touch pwned", "flags": "--loud $(touch pwned2)"}).outputs["said"]
    assert said == "hi; touch pwned --loud $(touch pwned2)"
    assert not list(tmp_path.rglob("pwned*"))


@pytest.mark.parametrize(("command", "message"), [
    ("exit 3", "the command exited with 3"),
    ("sleep 5", "the command took longer than 0.5 s and was stopped"),
    ("true", "the command wrote no image file at 'out'"),
])
def test_command_failures_are_model_errors(tmp_path: Path, command: str, message: str) -> None:
    bundle = tmp_path / "failing"
    bundle.mkdir()
    (bundle / "modelhall.yaml").write_text(
        f"name: failing\nruntime: {{adapter: command, command: '{command}', timeout: 0.5}}\n"
        "outputs: [{name: picture, type: image, path: out}]\n")
    runner = loaded(bundle, tmp_path)
    with pytest.raises(ModelError, match=message):
        runner.predict({})
    with pytest.raises(ModelError, match=message):
        runner.predict({})  # and again: a failure leaves the adapter usable


def test_python_adapter_function_and_class(tmp_path: Path) -> None:
    bundle = tmp_path / "py"
    bundle.mkdir()
    (bundle / "helper.py").write_text("def shout(x):\n    return x.upper()\n")
    (bundle / "predict.py").write_text(
        "from helper import shout\ncalls = []\n"
        "class Model:\n    def setup(self):\n        calls.append('setup')\n"
        "    def predict(self, text):\n        calls.append('predict')\n        return f'{shout(text)} {calls}'\n")
    (bundle / "modelhall.yaml").write_text(
        "name: py\nruntime: {adapter: python, entrypoint: predict.py:Model}\n"
        "inputs: [{name: text, type: text}]\noutputs: [{name: out, type: text}]\n")
    runner = loaded(bundle, tmp_path)
    assert runner.predict({"text": "a"}).outputs["out"] == "A ['setup', 'predict']"
    assert runner.predict({"text": "b"}).outputs["out"] == "B ['setup', 'predict', 'predict']"  # setup once


def test_python_adapter_reports_a_missing_entrypoint(tmp_path: Path) -> None:
    bundle = tmp_path / "missing"
    bundle.mkdir()
    (bundle / "predict.py").write_text("x = 1\n")
    (bundle / "modelhall.yaml").write_text("name: missing\nruntime: {adapter: python, entrypoint: predict.py:run}\n")
    runner = ModelRunner(load_spec_file(bundle), bundle, tmp_path / "scratch")
    runner.load()
    assert (runner.health, runner.error) == (Health.FAILED, "ModelError: predict.py defines no 'run'")


def test_a_result_that_does_not_fit_the_outputs_is_a_model_error(tmp_path: Path) -> None:
    bundle = tmp_path / "wrong"
    bundle.mkdir()
    (bundle / "predict.py").write_text("def predict():\n    return {'a': 1}\n")
    (bundle / "modelhall.yaml").write_text(
        "name: wrong\nruntime: {adapter: python, entrypoint: predict.py:predict}\n"
        "outputs: [{name: a, type: text}, {name: b, type: image}]\n")
    with pytest.raises(ModelError, match="the model returned no value for 'b'"):
        loaded(bundle, tmp_path).predict({})


def tiny_vit_snapshot(folder: Path) -> Path:
    """A randomly initialised 3-class ViT saved as a Hugging Face snapshot, with a model card."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "circle", 1: "square", 2: "triangle"}
    config = ViTConfig(image_size=16, patch_size=8, num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                       intermediate_size=16, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\npipeline_tag: image-classification\ntags: [shapes]\n---\n"
                                      "# Tiny shapes\nRandom weights, for tests.\n")
    return folder


def test_import_hf_then_predict_through_the_huggingface_adapter(tmp_path: Path) -> None:
    snapshot = tiny_vit_snapshot(tmp_path / "tiny-shapes")
    spec = import_huggingface(str(snapshot), tmp_path / "bundle")
    assert (spec.name, spec.task, spec.license, spec.tags) == ("tiny-shapes", "image-classification", "mit", ["shapes"])
    assert [(f.name, f.type) for f in spec.inputs] == [("image", "image")]
    assert [(f.name, f.type) for f in spec.outputs] == [("label", "label")]
    runner = loaded(tmp_path / "bundle", tmp_path)
    (tmp_path / "shape.png").write_bytes(png_bytes((16, 16)))
    label = runner.predict({"image": tmp_path / "shape.png"}).outputs["label"]
    assert set(label) == {"circle", "square", "triangle"}
    assert abs(sum(label.values()) - 1) < 1e-4


def test_import_hf_refuses_a_folder_without_a_task(tmp_path: Path) -> None:
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "config.json").write_text(json.dumps({"architectures": ["MysteryNet"]}))
    with pytest.raises(HuggingFaceImportError, match="cannot tell the task"):
        import_huggingface(str(tmp_path / "snapshot"), tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_huggingface_adapter_needs_the_model_folder(tmp_path: Path) -> None:
    spec = parse_spec_yaml("name: x\ntask: text-classification\nruntime: {adapter: huggingface, model: nowhere}\n")
    adapter = open_adapter(spec, tmp_path)
    with pytest.raises(ModelError, match="the model folder 'nowhere' is not in the bundle"):
        adapter.load()


def test_task_defaults_fill_inputs_and_outputs() -> None:
    spec = parse_spec_yaml("name: x\ntask: text-generation\nruntime: {adapter: huggingface}\n")
    assert [(f.name, f.type) for f in spec.inputs] == [("prompt", "text"), ("max_new_tokens", "integer")]
    assert [(f.name, f.type) for f in spec.outputs] == [("text", "text")]


def test_values_reject_what_the_spec_forbids(tmp_path: Path) -> None:
    runner = loaded(Path(__file__).resolve().parent.parent / "templates" / "image-classification", tmp_path)
    with pytest.raises(InputError, match="image: is required"):
        runner.predict({})
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="GIF")
    with pytest.raises(InputError, match=r"image: \.gif is not accepted"):
        runner.predict({"image": {"data": base64.b64encode(buffer.getvalue()).decode(), "name": "d.gif"}})
