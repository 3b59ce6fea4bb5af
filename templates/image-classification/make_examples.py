"""Write a few held-out digits as 64×64 PNGs into examples/ (dark ink on white, like a scan)."""

from pathlib import Path

import numpy as np
from PIL import Image

from train import dataset

EXAMPLES = Path(__file__).parent / "examples"


def main() -> None:
    _, x_test, _, y_test = dataset()
    EXAMPLES.mkdir(exist_ok=True)
    for digit in (0, 3, 7):
        index = int(np.flatnonzero(y_test == digit)[0])
        pixels = (255 - x_test[index, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST).save(EXAMPLES / f"digit-{digit}.png")


if __name__ == "__main__":
    main()
