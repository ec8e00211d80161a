"""The image a person looks at: the windowed image the model saw, its caption beneath.

Used by ``medblip caption --preview`` (a PNG beside the SRs), the quickstart, and the services'
optional Secondary Capture (``medblip_dicom.secondary_capture``), so all show the same thing:
the frame after the core's pixel path, scaled to a readable width, a black band below with the
caption in white and the notice "machine-generated, UNVERIFIED, not for diagnosis" in amber.
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

NOTICE = "AI caption: machine-generated, UNVERIFIED, not for diagnosis"
MIN_WIDTH = 512
MAX_WIDTH = 1024


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_captioned_image(image: Image.Image, caption: str) -> Image.Image:
    """`image` scaled to a readable width with the caption and the notice beneath it (RGB)."""
    image = image.convert("RGB")
    width = min(MAX_WIDTH, max(MIN_WIDTH, image.width))
    height = max(1, round(image.height * width / image.width))
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    font_size = max(14, width // 40)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1.0, probe.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    per_line = max(10, int((width - 2 * font_size) / char_w))
    caption_lines = textwrap.wrap(caption, per_line) or [""]
    notice_lines = textwrap.wrap(NOTICE, per_line)
    line_h = int(font_size * 1.35)
    band = line_h * (len(caption_lines) + len(notice_lines)) + font_size
    canvas = Image.new("RGB", (width, height + band), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + font_size // 2
    for line in caption_lines:
        draw.text((font_size, y), line, fill=(255, 255, 255), font=font)
        y += line_h
    for line in notice_lines:
        draw.text((font_size, y), line, fill=(255, 200, 0), font=font)
        y += line_h
    return canvas


def write_preview(source: Dataset, caption: str, out_dir: str | os.PathLike[str], *, frame: int | None = None) -> Path:
    """Write ``<source SOPInstanceUID>.png`` into `out_dir`: the windowed frame with its caption."""
    from medblip_dicom.fileio import atomic_write_bytes
    from medblip_dicom.pixels import dataset_to_image
    from medblip_dicom.report import report_filename

    preview = render_captioned_image(dataset_to_image(source, frame), caption)
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    name = report_filename(source)[: -len(".dcm")] + ".png"  # the UID, checked to be digits and dots
    return atomic_write_bytes(Path(out_dir) / name, buffer.getvalue())
