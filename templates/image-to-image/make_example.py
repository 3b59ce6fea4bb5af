"""Draw examples/beach.png: a small synthetic summer scene (sky, sun, sea, sand), so the template ships no photo."""

from pathlib import Path

from PIL import Image, ImageDraw


def main() -> None:
    image = Image.new("RGB", (256, 192), (120, 190, 245))
    draw = ImageDraw.Draw(image)
    draw.ellipse((180, 20, 230, 70), fill=(255, 220, 90))
    draw.rectangle((0, 100, 256, 140), fill=(30, 120, 190))
    draw.polygon([(0, 140), (256, 130), (256, 192), (0, 192)], fill=(230, 200, 140))
    draw.rectangle((60, 120, 64, 160), fill=(110, 70, 40))
    draw.ellipse((40, 100, 86, 128), fill=(40, 150, 60))
    image.save(Path(__file__).parent / "examples" / "beach.png")


if __name__ == "__main__":
    main()
