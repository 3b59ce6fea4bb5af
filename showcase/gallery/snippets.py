"""How to call a model, filled in for the one on the page: curl, Python (httpx) and gradio_client."""

from __future__ import annotations

import json
from typing import Any

EXAMPLE_VALUES = {"text": "hello", "number": 1, "integer": 1, "boolean": True, "choice": None, "json": {}}
FILE_TYPES = {"image", "audio", "video", "file"}


def example_inputs(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's first example where it has one (files as a placeholder: they go as base64), else defaults."""
    example = dict(spec["examples"][0]) if spec.get("examples") else {}
    values: dict[str, Any] = {}
    for field in spec.get("inputs", []):
        kind = field.get("type")
        if field["name"] in example and kind not in FILE_TYPES:
            values[field["name"]] = example[field["name"]]
        elif kind in FILE_TYPES:
            values[field["name"]] = f"<base64 {kind}>"
        elif kind == "choice":
            values[field["name"]] = (field.get("choices") or [""])[0]
        else:
            values[field["name"]] = field.get("default", EXAMPLE_VALUES.get(kind, ""))
    return values


def snippets(predict_url: str, demo_url: str, spec: dict[str, Any], credential: str) -> dict[str, str]:
    """``{"curl": …, "Python": …, "gradio_client": …}``; ``credential`` is ``token`` (an access
    token in ``$MODELHALL_TOKEN``) or ``share`` (a share link's token in ``$SHARE_LINK_TOKEN``)."""
    inputs = example_inputs(spec)
    body = json.dumps({"inputs": inputs})
    if credential == "share":
        header, header_py = "X-Modelhall-Share: $SHARE_LINK_TOKEN", '{"X-Modelhall-Share": os.environ["SHARE_LINK_TOKEN"]}'
    else:
        header, header_py = "Authorization: Bearer $MODELHALL_TOKEN", \
            '{"Authorization": "Bearer " + os.environ["MODELHALL_TOKEN"]}'
    ordered = ", ".join(repr(inputs.get(field["name"])) for field in spec.get("inputs", []))
    return {
        "curl": f"curl -X POST {predict_url} \\\n  -H \"{header}\" \\\n  -H 'Content-Type: application/json' \\\n"
                f"  -d '{body}'",
        "Python": (f"import os\n\nimport httpx\n\nanswer = httpx.post(\n    {predict_url!r},\n    headers={header_py},\n"
                   f"    json={{'inputs': {inputs!r}}},\n    timeout=120,\n)\nprint(answer.json()['outputs'])"),
        "gradio_client": (f"from gradio_client import Client\n\nclient = Client({demo_url!r})\n"
                          f"print(client.predict({ordered}, api_name='/predict'))"),
    }
