"""Classify a handwritten digit with the trained ResNet.

Any image is turned into the training form: grey, 8×8, ink bright on a dark ground
(a photo of dark ink on white paper is inverted), values 0..1.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from network import DigitResNet

WEIGHTS = Path(__file__).parent / "weights" / "digits_resnet.pt"


def to_tensor(image: Image.Image) -> torch.Tensor:
    grey = ImageOps.grayscale(image)
    if np.asarray(grey).mean() > 127:  # dark ink on light paper: make the ink bright, as in training
        grey = ImageOps.invert(grey)
    small = np.asarray(grey.resize((8, 8), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return torch.from_numpy(small)[None, None]


class Model:
    def setup(self) -> None:
        self.network = DigitResNet()
        self.network.load_state_dict(torch.load(WEIGHTS, map_location="cpu"))
        self.network.eval()

    def predict(self, image: Image.Image) -> dict[str, float]:
        with torch.no_grad():
            probabilities = torch.softmax(self.network(to_tensor(image)), dim=1)[0]
        return {str(digit): float(p) for digit, p in enumerate(probabilities)}
