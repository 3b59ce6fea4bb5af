"""``modelhall import hf``: a Hugging Face model snapshot → a bundle for the huggingface adapter.

The task comes from the model card's ``pipeline_tag`` or else the model's architecture;
a folder holding only a GGUF file is loaded from that file. The snapshot is copied into
``model/``, its README becomes the bundle's model card, and weights files become layers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, snapshot_download

from modelhall.spec import Spec, load_spec_file

ARCHITECTURE_TASKS = {
    "ForCausalLM": "text-generation",
    "ForSequenceClassification": "text-classification",
    "ForImageClassification": "image-classification",
    "ForConditionalGeneration": "text2text-generation",
    "ForMaskedLM": "fill-mask",
    "ForSpeechSeq2Seq": "automatic-speech-recognition",
}
WEIGHT_PATTERNS = ["model/*.safetensors", "model/*.bin", "model/*.gguf", "model/*.pt", "model/*.pth"]


class HuggingFaceImportError(ValueError):
    pass


def import_huggingface(source: str, target: Path) -> Spec:
    """Create a bundle in ``target`` from a local snapshot folder or a Hub repository id."""
    folder = Path(source) if Path(source).is_dir() else Path(snapshot_download(source))
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    card = _card_metadata(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    # transformers reads GGUF files only for causal language models
    implied = "text-generation" if ggufs and not config else None
    task = card.get("pipeline_tag") or _task_from_architectures(config.get("architectures") or []) or implied
    if not task:
        raise HuggingFaceImportError(f"cannot tell the task of {source}: its model card has no pipeline_tag "
                           "and its config names no known architecture")
    runtime: dict[str, Any] = {"adapter": "huggingface", "model": "model"}
    if ggufs and not config:
        runtime["gguf_file"] = ggufs[0]
    name = Path(source.rstrip("/")).name.lower().replace("_", "-")
    spec = {
        "name": name, "version": "1.0.0", "task": task, "framework": card.get("library_name") or "transformers",
        "description": f"{source} imported from a Hugging Face snapshot", "runtime": runtime,
        "files": {"weights": WEIGHT_PATTERNS},
    }
    if card.get("license"):
        spec["license"] = str(card["license"])
    if card.get("tags"):
        spec["tags"] = [str(tag) for tag in card["tags"]]
    shutil.copytree(folder, target / "model", ignore=shutil.ignore_patterns(".cache", ".git*"))
    if (folder / "README.md").exists():
        shutil.copyfile(folder / "README.md", target / "README.md")
    (target / "modelhall.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return load_spec_file(target)


def _card_metadata(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    return ModelCard.load(readme).data.to_dict() if readme.exists() else {}


def _task_from_architectures(architectures: list[str]) -> str | None:
    for architecture in architectures:
        for suffix, task in ARCHITECTURE_TASKS.items():
            if architecture.endswith(suffix):
                return task
    return None
