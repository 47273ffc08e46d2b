"""Documents looked at as a person would: each PDF page drawn to a PNG (PDFium, through
pypdfium2), and its text as a reader's copy and paste would give it (pypdf)."""

from __future__ import annotations

import io
from pathlib import Path

import pypdf
import pypdfium2
from PIL import Image, ImageChops

# Enough to tell a stamp from a border and text from a blank page; small enough to be quick.
DPI = 100


def page_images(content: bytes, directory: Path, name: str = "page") -> list[Image.Image]:
    """Every page drawn as it shows on screen, kept as PNGs under `directory`."""
    document = pypdfium2.PdfDocument(content)
    try:
        images = []
        for index in range(len(document)):
            image = document[index].render(scale=DPI / 72).to_pil().convert("RGB")
            image.save(directory / f"{name}-{index + 1}.png")
            images.append(image)
        return images
    finally:
        document.close()


def inked_share(image: Image.Image) -> float:
    """The share of the page that is not white paper."""
    grey = image.convert("L")
    dark = sum(count for level, count in enumerate(grey.histogram()) if level < 200)
    return dark / (image.width * image.height)


def red_pixels(image: Image.Image) -> int:
    """Pixels that read as red or pink (the VOID stamp, a void document's red edge), not
    black, grey or green."""
    red, green, blue = image.convert("RGB").split()

    def redder_than(other: Image.Image) -> Image.Image:
        return ImageChops.subtract(red, other).point(lambda value: 255 if value > 20 else 0)

    return ImageChops.multiply(redder_than(green), redder_than(blue)).histogram()[255]


def pdf_text(content: bytes) -> str:
    # pypdf may put a NUL before characters of a font's ToUnicode map: drop them.
    reader = pypdf.PdfReader(io.BytesIO(content))
    return "\n".join(page.extract_text().replace("\x00", "") for page in reader.pages)


def squeezed(text: str) -> str:
    """Text without whitespace: extraction breaks long strings where lines wrapped."""
    return "".join(text.split())
