"""The starter templates: each loads, predicts on its own examples, and gives output of its declared type."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelhall.showcase.runner import Health, ModelRunner
from modelhall.spec import load_spec_file
from modelhall.templates import template_names, template_path


def runner_for(name: str, tmp_path: Path) -> ModelRunner:
    bundle = template_path(name)
    runner = ModelRunner(load_spec_file(bundle), bundle, tmp_path / "scratch")
    runner.load()
    assert runner.health is Health.READY, runner.error
    return runner


def example_inputs(runner: ModelRunner, example: dict) -> dict:
    bundle = runner.bundle
    return {key: bundle / value if key in ("image", "photo") else value for key, value in example.items()}


def test_every_template_is_valid_and_has_examples_and_a_card() -> None:
    assert set(template_names()) >= {"hello", "image-classification", "image-to-image", "text-generation"}
    for name in template_names():
        spec = load_spec_file(template_path(name))
        assert spec.examples, name
        assert (template_path(name) / "README.md").read_text().startswith("---\n"), name


def test_digit_classifier_reads_its_examples(tmp_path: Path) -> None:
    runner = runner_for("image-classification", tmp_path)
    for example in runner.spec.examples:
        expected = Path(example["image"]).stem.split("-")[1]
        label = runner.predict(example_inputs(runner, example)).outputs["digit"]
        assert next(iter(label)) == expected
        assert len(label) == 3 and sum(label.values()) <= 1.0001  # the top 3 of 10 probabilities


def test_digit_classifier_accuracy_on_held_out_digits(tmp_path: Path) -> None:
    """Every held-out digit, rendered as a 64×64 dark-on-light PNG, through the same path as a request."""
    runner = runner_for("image-classification", tmp_path)
    sys.path.insert(0, str(runner.bundle))
    try:
        from train import dataset  # the template's own split
    finally:
        sys.path.remove(str(runner.bundle))
    _, x_test, _, y_test = dataset()
    correct = 0
    for pixels, digit in zip(x_test, y_test, strict=True):
        path = tmp_path / "digit.png"
        Image.fromarray((255 - pixels[0] * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.NEAREST).save(path)
        correct += next(iter(runner.predict({"image": path}).outputs["digit"])) == str(digit)
    accuracy = correct / len(y_test)
    assert accuracy >= 0.97, f"held-out accuracy {accuracy:.3f} on {len(y_test)} digits"


def test_winterize_turns_its_example_into_a_colder_image_of_the_same_size(tmp_path: Path) -> None:
    runner = runner_for("image-to-image", tmp_path)
    example = runner.spec.examples[0]
    source = Image.open(runner.bundle / example["photo"]).convert("RGB")
    result = runner.predict(example_inputs(runner, example)).outputs["output"]
    assert isinstance(result, Image.Image) and result.size == source.size
    before, after = np.asarray(source, dtype=float), np.asarray(result.convert("RGB"), dtype=float)
    assert (after[..., 2] - after[..., 0]).mean() > (before[..., 2] - before[..., 0]).mean()  # bluer
    again = runner.predict(example_inputs(runner, example)).outputs["output"]
    assert np.array_equal(np.asarray(again), np.asarray(result))  # the same photo gets the same snow
    assert not (runner.bundle / "results").exists()  # the bundle itself was not written to


def test_text_generation_answers_its_examples(tmp_path: Path) -> None:
    if not any((template_path("text-generation") / "model").glob("*.gguf")):
        pytest.fail("run `python templates/text-generation/fetch_model.py` (make does) to fetch the weights")
    runner = runner_for("text-generation", tmp_path)
    for example in runner.spec.examples:
        text = runner.predict(example).outputs["text"]
        assert isinstance(text, str) and text.strip(), example
    assert "Paris" in runner.predict({"prompt": "What is the capital of France?", "max_new_tokens": 20}).outputs["text"]
