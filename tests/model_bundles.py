"""Bundles written by tests: one that uses every input and output type, and small variants."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

from PIL import Image

EVERY_TYPE_SPEC = """
name: every-type
description: Echoes every input type into every output type.
runtime: {adapter: python, entrypoint: predict.py:predict}
inputs:
  - {name: prompt, type: text, max_length: 50}
  - {name: strength, type: number, min: 0, max: 1, default: 0.5}
  - {name: steps, type: integer, min: 1, max: 10, default: 2}
  - {name: fast, type: boolean, default: false}
  - {name: style, type: choice, choices: [plain, bold, italic, caps, wide], default: plain}
  - {name: photo, type: image, accept: [.png, .jpg], max_size: 200kB}
  - {name: voice, type: audio, required: false}
  - {name: clip, type: video, required: false}
  - {name: document, type: file, accept: [.txt], required: false}
  - {name: options, type: json, required: false}
outputs:
  - {name: summary, type: text}
  - {name: doubled, type: number}
  - {name: echo, type: json}
  - {name: verdict, type: label, top_k: 2}
  - {name: mirrored, type: image}
  - {name: sound, type: audio}
  - {name: movie, type: video}
  - {name: attachment, type: file}
  - {name: notes, type: markdown}
"""

EVERY_TYPE_MODEL = '''
from pathlib import Path

from PIL import Image, ImageOps

HERE = Path(__file__).parent


def predict(prompt, strength, steps, fast, style, photo, voice, clip, document, options):
    if prompt == "explode":
        raise RuntimeError("the model refuses to explode")
    return {
        "summary": f"{prompt}|{steps}|{fast}|{style}|{photo.size[0]}x{photo.size[1]}",
        "doubled": strength * 2,
        "echo": {"options": options, "document": Path(document).read_text() if document else None},
        "verdict": {"cat": strength, "dog": 1 - strength, "eel": 0.0},
        "mirrored": ImageOps.mirror(photo.convert("RGB")),
        "sound": voice or str(HERE / "tone.wav"),
        "movie": clip or str(HERE / "clip.mp4"),
        "attachment": document or str(HERE / "notes.txt"),
        "notes": f"**{prompt}** in *{style}*",
    }
'''


def png_bytes(size: tuple[int, int] = (6, 4), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(samples: int = 800) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", (i * 300) % 30000) for i in range(samples)))
    return buffer.getvalue()


def write_every_type_bundle(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "modelhall.yaml").write_text(EVERY_TYPE_SPEC)
    (directory / "predict.py").write_text(EVERY_TYPE_MODEL)
    (directory / "tone.wav").write_bytes(wav_bytes())
    (directory / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42not-a-real-video")
    (directory / "notes.txt").write_text("default attachment")
    (directory / "photo.png").write_bytes(png_bytes())
    return directory
