"""How to call a model, filled in for the one on the page: curl, Python (httpx) and gradio_client.

Each snippet runs as pasted: a file input is read from a local file (named after the spec's
example, ``digit-7.png``, or after the input, ``image.png``), base64-encoded by ``base64 -w0``
in the shell and by ``open(…, 'rb')`` in Python.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

EXAMPLE_VALUES = {"text": "hello", "number": 1, "integer": 1, "boolean": True, "choice": None, "json": {}}
FILE_TYPES = {"image", "audio", "video", "file"}
DEFAULT_EXTENSIONS = {"image": ".png", "audio": ".wav", "video": ".mp4", "file": ".bin"}


def local_file(field: dict[str, Any], example: dict[str, Any]) -> str:
    """The local file a snippet reads for a file input: the example's name, else the input's."""
    given = example.get(field["name"])
    if isinstance(given, str) and given:
        return posixpath.basename(given)
    extension = next((kind for kind in field.get("accept") or [] if kind.startswith(".")),
                     DEFAULT_EXTENSIONS.get(field.get("type", ""), ".bin"))
    return f"{field['name']}{extension}"


def example_inputs(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The values to send (the spec's first example where it has one, else defaults), and the local
    file each file input is read from."""
    example = dict(spec["examples"][0]) if spec.get("examples") else {}
    values: dict[str, Any] = {}
    files: dict[str, str] = {}
    for field in spec.get("inputs", []):
        kind = field.get("type")
        if kind in FILE_TYPES:
            files[field["name"]] = local_file(field, example)
        elif field["name"] in example:
            values[field["name"]] = example[field["name"]]
        elif kind == "choice":
            values[field["name"]] = (field.get("choices") or [""])[0]
        else:
            values[field["name"]] = field.get("default", EXAMPLE_VALUES.get(kind, ""))
    return values, files


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def curl_body(values: dict[str, Any], files: dict[str, str]) -> str:
    """The body for ``curl -d`` (quoted JSON) or, with files, the shell that writes it to ``request.json``
    with each file's ``base64 -w0`` (a file, not the command line: a photo's base64 is longer than one
    argument may be)."""
    if not files:
        return _shell_quote(json.dumps({"inputs": values}))
    steps = []
    literal = '{"inputs": {' + "".join(f"{json.dumps(name)}: {json.dumps(value)}, " for name, value in values.items())
    for index, (name, path) in enumerate(files.items()):
        literal += f'{json.dumps(name)}: {{"name": {json.dumps(path)}, "data": "'
        steps += [f"printf '%s' {_shell_quote(literal)}", f"base64 -w0 {_shell_quote(path)}"]
        literal = '"}' + (", " if index < len(files) - 1 else "}}")
    steps.append(f"printf '%s' {_shell_quote(literal)}")
    return "{ " + "; ".join(steps) + "; } > request.json"


def snippets(predict_url: str, demo_url: str, spec: dict[str, Any], credential: str) -> dict[str, str]:
    """``{"curl": …, "Python": …, "gradio_client": …}``; ``credential`` is ``token`` (an access
    token in ``$MODELHALL_TOKEN``) or ``share`` (a share link's token in ``$SHARE_LINK_TOKEN``)."""
    values, files = example_inputs(spec)
    if credential == "share":
        header, header_py = "X-Modelhall-Share: $SHARE_LINK_TOKEN", '{"X-Modelhall-Share": os.environ["SHARE_LINK_TOKEN"]}'
    else:
        header, header_py = "Authorization: Bearer $MODELHALL_TOKEN", \
            '{"Authorization": "Bearer " + os.environ["MODELHALL_TOKEN"]}'
    request = f"curl -X POST {predict_url} \\\n  -H \"{header}\" \\\n  -H 'Content-Type: application/json' \\\n"
    curl = (f"{curl_body(values, files)}\n{request}  --data-binary @request.json" if files
            else f"{request}  -d {curl_body(values, files)}")
    python_inputs = "{" + ", ".join([*(f"{name!r}: {value!r}" for name, value in values.items()),
                                     *(f"{name!r}: file({path!r})" for name, path in files.items())]) + "}"
    reader = ("\n\ndef file(path):\n    with open(path, 'rb') as f:\n"
              "        return {'data': base64.b64encode(f.read()).decode(), 'name': os.path.basename(path)}\n\n"
              if files else "")
    python = (f"{'import base64' + chr(10) if files else ''}import os\n\nimport httpx\n{reader}\n"
              f"answer = httpx.post(\n    {predict_url!r},\n    headers={header_py},\n"
              f"    json={{'inputs': {python_inputs}}},\n    timeout=120,\n)\nprint(answer.json()['outputs'])")
    ordered = ", ".join(f"handle_file({files[field['name']]!r})" if field["name"] in files
                        else repr(values.get(field["name"])) for field in spec.get("inputs", []))
    imports = "Client, handle_file" if files else "Client"
    return {
        "curl": curl,
        "Python": python,
        "gradio_client": (f"from gradio_client import {imports}\n\nclient = Client({demo_url!r})\n"
                          f"print(client.predict({ordered}, api_name='/predict'))"),
    }
