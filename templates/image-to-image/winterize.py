"""Turn summer photos into wintry ones: a fixed, documented transform (not a learned model).

For every image in --dataroot: shift the colours cold (less red, more blue), lift the
shadows, desaturate a little, then add snowfall — white flakes of a few sizes whose
places are drawn from a generator seeded by the image's own bytes, so the same photo
always gets the same snow. Writes <name>_winter.png into --results.

Usage (as in the MLC paper's CycleGAN config): python winterize.py --dataroot ./datasets/input --results ./results
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def cold_grade(image: Image.Image, strength: float) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    grade = np.array([1.0 - 0.25 * strength, 1.0 - 0.05 * strength, 1.0 + 0.2 * strength], dtype=np.float32)
    lifted = pixels * grade + 0.12 * strength * (1.0 - pixels)  # brighter shadows, as under snow light
    graded = Image.fromarray((np.clip(lifted, 0, 1) * 255).astype(np.uint8))
    return ImageEnhance.Color(graded).enhance(1.0 - 0.35 * strength)


def snowfall(size: tuple[int, int], seed: int, density: float) -> Image.Image:
    width, height = size
    rng = np.random.default_rng(seed)
    layer = np.zeros((height, width), dtype=np.float32)
    count = int(width * height * density / 100)
    xs, ys = rng.integers(0, width, count), rng.integers(0, height, count)
    radii = rng.choice([0, 1, 1, 2], count)
    for x, y, r in zip(xs, ys, radii, strict=True):
        layer[max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1] = 1.0
    return Image.fromarray((layer * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


def winterize(path: Path, strength: float, density: float) -> Image.Image:
    seed = int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "big")
    with Image.open(path) as image:
        graded = cold_grade(image, strength)
    snow = snowfall(graded.size, seed, density)
    white = Image.new("RGB", graded.size, (250, 252, 255))
    return Image.composite(white, graded, snow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--density", type=float, default=0.6, help="flakes per 100 pixels")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in args.dataroot.iterdir() if p.suffix.lower() in SUFFIXES)
    if not images:
        raise SystemExit(f"no image in {args.dataroot}")
    for path in images:
        winterize(path, args.strength, args.density).save(args.results / f"{path.stem}_winter.png")
        print(f"{path.name} -> {path.stem}_winter.png")


if __name__ == "__main__":
    main()
