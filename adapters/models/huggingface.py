"""The ``huggingface`` adapter: a Hugging Face model folder inside the bundle, run by a transformers pipeline.

The folder (``runtime.model``, default the bundle root) holds config, tokenizer and
weights, or one GGUF file (``runtime.gguf_file``). Nothing is downloaded: the hub is
switched off while loading. Chat models (a tokenizer with a chat template) get the
prompt as a user message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelhall.adapters.models.base import ModelError
from modelhall.spec import Spec


class HuggingFaceAdapter:
    def __init__(self, spec: Spec, bundle: Path):
        if not spec.task:
            raise ModelError("the huggingface adapter needs a task, such as text-generation")
        self.spec = spec
        self.task = spec.task
        self.folder = (bundle / spec.runtime.model).resolve()
        self._pipeline: Any = None

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

        if not self.folder.is_dir():
            raise ModelError(f"the model folder {self.spec.runtime.model!r} is not in the bundle")
        gguf = self.spec.runtime.gguf_file
        if gguf:
            tokenizer = AutoTokenizer.from_pretrained(self.folder, gguf_file=gguf)
            model = AutoModelForCausalLM.from_pretrained(self.folder, gguf_file=gguf)
            self._pipeline = pipeline(self.task, model=model, tokenizer=tokenizer)
        else:
            self._pipeline = pipeline(self.task, model=str(self.folder))

    def predict(self, inputs: dict[str, Any], workdir: Path) -> Any:
        if self._pipeline is None:
            raise RuntimeError("load() must be called before predict()")
        try:
            return self._run(inputs)
        except Exception as error:  # transformers raises many types; all mean this input failed
            raise ModelError(f"{type(error).__name__}: {error}") from error

    def _run(self, inputs: dict[str, Any]) -> Any:
        first = next(iter(inputs.values()))
        first = str(first) if isinstance(first, Path) else first
        if self.task == "text-generation":
            return self._generate(inputs)
        result = self._pipeline(first)
        if self.task in ("text-classification", "image-classification"):
            return {entry["label"]: entry["score"] for entry in _flat(result)}
        if self.task == "fill-mask":
            return {entry["token_str"]: entry["score"] for entry in _flat(result)}
        key = {"summarization": "summary_text", "translation": "translation_text"}.get(self.task, "generated_text")
        entry = _flat(result)[0] if isinstance(result, list) else result
        return entry.get(key) or entry.get("text") or str(entry)

    def _generate(self, inputs: dict[str, Any]) -> str:
        prompt = inputs.get("prompt") or next(iter(inputs.values()))
        options = {"max_new_tokens": int(inputs.get("max_new_tokens") or 64), "do_sample": False}
        if getattr(self._pipeline.tokenizer, "chat_template", None):
            result = self._pipeline([{"role": "user", "content": prompt}], **options)
            return result[0]["generated_text"][-1]["content"]
        result = self._pipeline(prompt, return_full_text=False, **options)
        return result[0]["generated_text"]


def _flat(result: Any) -> list[dict[str, Any]]:
    return result[0] if result and isinstance(result[0], list) else result
