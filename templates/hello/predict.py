"""The hello bundle's model: a greeting built from a template kept as its 'weights'."""

import json
from pathlib import Path

TEMPLATES = json.loads((Path(__file__).parent / "weights" / "greetings.json").read_text())


def predict(name: str, style: str = "plain") -> str:
    return TEMPLATES[style].format(name=name)
