"""Train the digit ResNet on scikit-learn's digits (1,797 8×8 images that ship with the package).

Deterministic: a fixed seed and split. Writes weights/digits_resnet.pt and prints the
held-out accuracy. Run: python train.py
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from network import DigitResNet

SEED = 0
EPOCHS = 30
WEIGHTS = Path(__file__).parent / "weights" / "digits_resnet.pt"


def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # pixel values 0..16 → 0..1
    return train_test_split(images, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target)


def main() -> None:
    torch.manual_seed(SEED)
    x_train, x_test, y_train, y_test = dataset()
    model = DigitResNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    print(f"held-out accuracy {accuracy:.3f} on {len(y_test)} images; saved {WEIGHTS}")


if __name__ == "__main__":
    main()
