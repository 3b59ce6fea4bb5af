"""The model server generated from a spec: every type through POST /predict and through gradio_client."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from fastapi.testclient import TestClient

from conftest import ModelServer, serve_bundle
from modelhall.showcase.runner import open_runner
from modelhall.showcase.server import create_server
from model_bundles import png_bytes, wav_bytes, write_every_type_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_every_type_bundle(tmp_path_factory.mktemp("every-type") / "bundle")


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from serve_bundle(bundle, tmp_path_factory.mktemp("logs"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def full_inputs() -> dict:
    return {
        "prompt": "hi", "strength": 0.25, "steps": 3, "fast": True, "style": "bold",
        "photo": {"data": b64(png_bytes()), "name": "red.png"},
        "voice": {"data": b64(wav_bytes()), "name": "voice.wav"},
        "clip": {"data": b64(b"fake video bytes"), "name": "clip.mp4"},
        "document": {"data": b64(b"hello document"), "name": "doc.txt"},
        "options": {"k": [1, 2]},
    }


def decode_image(rendered: dict) -> Image.Image:
    assert rendered["mime_type"] == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(rendered["data"])))


def test_every_type_round_trips_through_the_json_api(server: ModelServer) -> None:
    response = httpx.post(f"{server.url}/predict", json={"inputs": full_inputs()}, timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["summary"] == "hi|3|True|bold|6x4"
    assert outputs["doubled"] == 0.5
    assert outputs["echo"] == {"options": {"k": [1, 2]}, "document": "hello document"}
    assert outputs["verdict"] == {"label": "dog", "confidences": [{"label": "dog", "confidence": 0.75},
                                                                  {"label": "cat", "confidence": 0.25}]}
    mirrored = decode_image(outputs["mirrored"])
    assert mirrored.size == (6, 4) and mirrored.getpixel((5, 0)) == (0, 0, 255)
    assert base64.b64decode(outputs["sound"]["data"]) == wav_bytes()
    assert outputs["sound"]["mime_type"] in ("audio/wav", "audio/x-wav")
    assert base64.b64decode(outputs["movie"]["data"]) == b"fake video bytes"
    assert base64.b64decode(outputs["attachment"]["data"]) == b"hello document"
    assert outputs["notes"] == "**hi** in *bold*"
    assert response.json()["duration_ms"] > 0


def test_multipart_form_with_files(server: ModelServer) -> None:
    response = httpx.post(f"{server.url}/predict", data={"prompt": "form", "steps": "4", "fast": "false"},
                          files={"photo": ("p.png", png_bytes((3, 3)), "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["summary"] == "form|4|False|plain|3x3"
    assert outputs["doubled"] == 1.0  # the default strength, 0.5


def test_every_type_round_trips_through_gradio_client(server: ModelServer, bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("from gradio")
    (tmp_path / "voice.wav").write_bytes(wav_bytes())
    client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
    result = client.predict(
        "hi", 0.25, 3, True, "bold", handle_file(str(bundle / "photo.png")), handle_file(str(tmp_path / "voice.wav")),
        None, handle_file(str(tmp_path / "doc.txt")), '{"k": [1, 2]}', api_name="/predict")
    summary, doubled, echo, verdict, mirrored, sound, movie, attachment, notes = result
    assert summary == "hi|3|True|bold|6x4"
    assert doubled == 0.5
    assert echo == {"options": {"k": [1, 2]}, "document": "from gradio"}
    assert verdict["label"] == "dog" and [c["label"] for c in verdict["confidences"]] == ["dog", "cat"]
    assert Image.open(mirrored).getpixel((5, 0))[:3] == (0, 0, 255)
    assert Path(sound).stat().st_size > 0
    assert Path(movie["video"] if isinstance(movie, dict) else movie).read_bytes() == (bundle / "clip.mp4").read_bytes()
    assert Path(attachment).read_text() == "from gradio"
    assert notes == "**hi** in *bold*"


def test_gradio_api_is_documented_under_a_stable_name(server: ModelServer) -> None:
    info = Client(server.url, verbose=False).view_api(print_info=False, return_format="dict")
    assert "/predict" in info["named_endpoints"]
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/predict"]["parameters"]]
    assert parameters == ["prompt", "strength", "steps", "fast", "style", "photo", "voice", "clip", "document",
                          "options"]


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"strength": 3}, "strength", "must be at most 1"),
    ({"steps": 2.5}, "steps", "must be a whole number"),
    ({"steps": "three"}, "steps", "must be a number"),
    ({"style": "loud"}, "style", "'loud' is not one of plain, bold, italic, caps, wide"),
    ({"prompt": "x" * 51}, "prompt", "must be at most 50 characters"),
    ({"prompt": None}, "prompt", "is required"),
    ({"fast": "yes"}, "fast", "must be true or false"),
    ({"photo": {"data": b64(b"not an image"), "name": "x.png"}}, "photo", "is not an image that can be read"),
    ({"photo": {"data": b64(png_bytes()), "name": "x.gif"}}, "photo", ".gif is not accepted; use .png, .jpg"),
    ({"photo": {"data": b64(png_bytes((400, 400)) + b"\0" * 200_000), "name": "x.png"}}, "photo", "at most 200000"),
    ({"photo": "%%%"}, "photo", "is not valid base64"),
    ({"document": {"data": b64(b"x"), "name": "x.exe"}}, "document", ".exe is not accepted"),
    ({"options": "{broken"}, "options", "is not valid JSON"),
    ({"surprise": 1}, "surprise", "is not an input of this model"),
])
def test_bad_input_is_a_422_naming_the_field(server: ModelServer, change: dict, field: str, message: str) -> None:
    inputs = {**full_inputs(), **change}
    response = httpx.post(f"{server.url}/predict", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]


def test_malformed_body(server: ModelServer) -> None:
    response = httpx.post(f"{server.url}/predict", content=b"{nope", headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]["field"]) == (422, "inputs")


def test_a_raising_model_is_a_500_and_the_server_keeps_serving(server: ModelServer) -> None:
    failed = httpx.post(f"{server.url}/predict", json={"inputs": {**full_inputs(), "prompt": "explode"}}, timeout=30)
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "the model failed: RuntimeError: the model refuses to explode"
    ok = httpx.post(f"{server.url}/predict", json={"inputs": full_inputs()}, timeout=30)
    assert ok.status_code == 200


def test_errors_reach_gradio_clients_as_messages(server: ModelServer, bundle: Path) -> None:
    client = Client(server.url, verbose=False)
    photo = handle_file(str(bundle / "photo.png"))
    with pytest.raises(Exception, match="Value 3 is greater than maximum value 1.0"):  # Gradio's own slider check
        client.predict("hi", 3, 3, True, "bold", photo, None, None, None, None, api_name="/predict")
    with pytest.raises(Exception, match="prompt: must be at most 50 characters"):
        client.predict("x" * 51, 0.5, 3, True, "bold", photo, None, None, None, None, api_name="/predict")
    with pytest.raises(Exception, match="The model failed: RuntimeError: the model refuses to explode"):
        client.predict("explode", 0.5, 3, True, "bold", photo, None, None, None, None, api_name="/predict")


def test_spec_health_and_metrics(server: ModelServer) -> None:
    described = httpx.get(f"{server.url}/spec").json()
    schema = described["request_schema"]["properties"]["inputs"]
    assert schema["properties"]["strength"] == {"title": "Strength", "type": "number", "minimum": 0.0,
                                                "maximum": 1.0, "default": 0.5}
    assert schema["required"] == ["prompt", "photo"]
    assert described["spec"]["name"] == "every-type"
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ready"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'modelhall_predictions_total{outcome="ok"}' in metrics
    assert "modelhall_model_ready 1.0" in metrics


def test_health_is_503_until_the_model_loads_and_after_it_fails(tmp_path: Path) -> None:
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "modelhall.yaml").write_text("name: broken\nruntime: {adapter: python, entrypoint: predict.py:Model}\n"
                                           "inputs: [{name: x, type: text}]\noutputs: [{name: y, type: text}]\n")
    (bundle / "predict.py").write_text("class Model:\n    def setup(self):\n        raise OSError('weights missing')\n"
                                       "    def predict(self, x):\n        return x\n")
    with TestClient(create_server(open_runner(bundle, scratch=tmp_path / "scratch"))) as client:
        health = client.get("/healthz", params={"wait": 30})
        assert (health.status_code, health.json()["status"], health.json()["error"]) == (
            503, "failed", "OSError: weights missing")
        refused = client.post("/predict", json={"inputs": {"x": "a"}})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"


def gated_bundle(directory: Path) -> tuple[Path, Path]:
    """A model whose loading blocks until something is written to its gate (a named pipe)."""
    directory.mkdir()
    gate = directory / "gate"
    os.mkfifo(gate)
    (directory / "modelhall.yaml").write_text("name: gated\nruntime: {adapter: python, entrypoint: predict.py:Model}\n"
                                              "inputs: [{name: x, type: text}]\noutputs: [{name: y, type: text}]\n")
    (directory / "predict.py").write_text(f"class Model:\n    def setup(self):\n        open({str(gate)!r}).read()\n"
                                          "    def predict(self, x):\n        return x.upper()\n")
    return directory, gate


def test_health_waits_for_the_model_when_asked(tmp_path: Path) -> None:
    bundle, gate = gated_bundle(tmp_path / "gated")
    with TestClient(create_server(open_runner(bundle, scratch=tmp_path / "scratch"))) as client:
        assert client.get("/healthz").json()["status"] == "starting"
        assert client.get("/healthz", params={"wait": 0.2}).json()["status"] == "starting"  # gave up waiting
        assert client.get("/healthz", params={"wait": "soon"}).status_code == 422
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.get, "/healthz", params={"wait": 30})
            gate.write_text("open")
            health = waiting.result(timeout=30)
        assert (health.status_code, health.json()["status"]) == (200, "ready")
        assert client.post("/predict", json={"inputs": {"x": "a"}}).json()["outputs"] == {"y": "A"}


def test_the_demo_is_built_when_asked_for_while_the_model_still_loads(tmp_path: Path) -> None:
    bundle, gate = gated_bundle(tmp_path / "gated")
    with TestClient(create_server(open_runner(bundle, scratch=tmp_path / "scratch"))) as client:
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 503 and "Starting the demo" in page.text
        config = client.get("/config")  # waits for the demo, which nobody's prediction holds back
        assert config.status_code == 200
        assert "X" in {component["props"].get("label") for component in config.json()["components"]}
        health = client.get("/healthz").json()
        assert (health["status"], health["demo"]) == ("starting", "ready")
        gate.write_text("open")


def test_demo_page_is_served(server: ModelServer) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "every-type" in page.text
    config = httpx.get(server.url + "/config").json()
    labels = {c["props"].get("label") for c in config["components"]}
    assert {"Prompt", "Strength", "Photo", "Verdict", "Mirrored"} <= labels
    json.dumps(config)
