"""The spec → a ``gradio.Blocks`` demo: inputs, a run button, outputs, examples, the model card.

The run button's API is ``/predict`` (``gradio_client``: ``client.predict(..., api_name="/predict")``)
with the inputs positionally in the spec's order, and returns the outputs in the spec's order.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from modelhall.adapters.models import ModelError
from modelhall.showcase.components import input_component, output_component
from modelhall.showcase.runner import ModelRunner, NotReadyError, RunContext
from modelhall.showcase.values import FILE_TYPES, InputError, to_gradio
from modelhall.spec import Spec

API_NAME = "predict"
logger = logging.getLogger(__name__)
PROBLEM_ID = "run-problem"
# The message of a failed run stays under the Run button until the next run (Gradio's own is a toast that
# vanishes). Both are browser-only events (no function, so no request): a run is one prediction, for a
# share link's count too. Gradio gives a failure listener no message: it is read from the error toast.
CLEAR_PROBLEM_JS = f"""() => {{ const box = document.getElementById("{PROBLEM_ID}");
  if (box) {{ box.textContent = ""; box.hidden = true; }} }}"""
SHOW_PROBLEM_JS = f"""() => {{ const started = Date.now();
  const show = () => {{
    const toasts = document.querySelectorAll(".toast-body.error .toast-text, .toast-body.error .toast-message-text");
    const box = document.getElementById("{PROBLEM_ID}");
    if (box && toasts.length) {{ box.textContent = toasts[toasts.length - 1].textContent.trim(); box.hidden = false; }}
    else if (Date.now() - started < 3000) {{ requestAnimationFrame(show); }}
  }};
  show(); }}"""
PROBLEM_BOX = (f"<div id='{PROBLEM_ID}' role='alert' hidden style='border:1px solid #d33;border-radius:6px;"
               "padding:.6rem .8rem;color:#b00020;background:#fff5f5'></div>")


def _header(spec: Spec, digest: str | None) -> str:
    lines = [f"# {spec.name}", spec.description or ""]
    facts = [f"version **{spec.version}**"]
    if spec.task:
        facts.append(f"task **{spec.task}**")
    if spec.framework:
        facts.append(f"framework **{spec.framework}**")
    facts.append(f"answered by `{digest}`" if digest else "running from a local folder (no pushed digest)")
    return "\n\n".join([*lines, " · ".join(facts)])


def _examples(spec: Spec, bundle: Path) -> list[list[Any]]:
    rows = []
    for example in spec.examples:
        row = []
        for field in spec.inputs:
            value = example.get(field.name, getattr(field, "default", None))
            if isinstance(field, FILE_TYPES) and value is not None:
                value = str((bundle / value).resolve())
            row.append(value)
        rows.append(row)
    return rows


def build_demo(runner: ModelRunner, model_card: str | None) -> gr.Blocks:
    spec = runner.spec

    def run(*arguments: Any) -> Any:
        *values, request = arguments
        raw = {}
        for field, value in zip(spec.inputs, values, strict=True):
            raw[field.name] = Path(value) if isinstance(field, FILE_TYPES) and isinstance(value, str) else value
        context = RunContext.from_headers({k.lower(): v for k, v in request.headers.items()}, source="demo")
        try:
            prediction = runner.predict(raw, context)
        except InputError as error:  # the caller's: one line in the log, not a traceback
            logger.warning("a demo run was refused: %s", error)
            raise gr.Error(f"Check the input: {error}", title="Check the input", print_exception=False) from None
        except NotReadyError as error:
            raise gr.Error(f"The model is not ready: {error}", title="Starting…") from None
        except ModelError as error:
            raise gr.Error(f"The model failed: {error}", title="Model error") from None
        result = to_gradio(spec, prediction.outputs)
        return result[0] if len(result) == 1 else result

    # Gradio names the API's parameters after the function's: give it the spec's input names.
    # (and a gr.Request, which Gradio fills in and leaves out of the API)
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*(inspect.Parameter(field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for field in spec.inputs),
         inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)])
    run.__annotations__ = {"request": gr.Request}

    with gr.Blocks(title=f"{spec.name} · Modelhall", analytics_enabled=False) as demo:
        gr.Markdown(_header(spec, runner.digest))
        with gr.Row():
            with gr.Column():
                inputs = [input_component(field) for field in spec.inputs]
                button = gr.Button("Run", variant="primary")
                gr.HTML(PROBLEM_BOX)
            with gr.Column():
                outputs = [output_component(field) for field in spec.outputs]
        if spec.examples:
            gr.Examples(examples=_examples(spec, runner.bundle), inputs=inputs)
        if model_card:
            with gr.Accordion("Model card", open=False):
                gr.Markdown(model_card)
        button.click(None, js=CLEAR_PROBLEM_JS)
        button.click(run, inputs=inputs, outputs=outputs, api_name=API_NAME).failure(None, js=SHOW_PROBLEM_JS)
    return demo
