"""A small learnable data set in both ROCO layouts, for tests and the offline quickstart.

Each picture is a radiograph-like grey image (a chest silhouette with noise) holding one finding of
a given kind in a given lung zone; its caption is fully determined by what is drawn:

    "Chest radiograph showing a round opacity in the right upper lobe."

Three findings (a filled round opacity, a ring-shaped cavitary lesion, a linear band) times four
zones give twelve captions; positions, sizes, contrast and noise vary per image, so held-out images
are new pictures of known captions. Every caption word occurs in the real ROCO captions shipped with
the package (checked when the module is used). Images follow the radiological convention: the
patient's right is on the image's left.

:func:`write_dataset` writes the original ROCO layout (``data/<split>/radiology/captions.txt``,
``licences.txt``, ``images/``; every fifth image under a PMC-style name given in licences.txt), the
Kaggle layout (``all_data/<split>/radiology/images`` + ``traindata.csv`` / ``valdata.csv`` /
``testdata.csv``), or both.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FINDINGS = ("round opacity", "cavitary lesion", "linear atelectasis")
ZONES = ("right upper lobe", "right lower lobe", "left upper lobe", "left lower lobe")
TEMPLATE = "Chest radiograph showing a {finding} in the {zone}."
IMAGE_SIZE = 128
SPLIT_SIZES = {"train": 480, "validation": 48, "test": 48}


@dataclass(frozen=True)
class Sample:
    """One generated picture and its caption."""

    image: Image.Image
    caption: str
    finding: str
    zone: str


def captions() -> list[str]:
    """All twelve captions the generator can produce."""
    return [TEMPLATE.format(finding=f, zone=z) for f in FINDINGS for z in ZONES]


def check_vocabulary() -> None:
    """Raise if a caption word is not found in the shipped real ROCO captions."""
    from medblip_dicom.training.demo_model import roco_captions
    from medblip_dicom.training.bleu import tokenize

    known = {w for c in roco_captions() for w in tokenize(c)}
    missing = {w for c in captions() for w in tokenize(c)} - known
    if missing:
        raise AssertionError(f"synthetic caption words not in the ROCO captions: {sorted(missing)}")


def make_sample(rng: random.Random, finding: str | None = None, zone: str | None = None) -> Sample:
    """Draw one picture; the finding and zone are random unless given."""
    finding = finding or rng.choice(FINDINGS)
    zone = zone or rng.choice(ZONES)
    s = IMAGE_SIZE
    img = Image.new("L", (s, s), 20)
    draw = ImageDraw.Draw(img)
    # chest silhouette: two lung fields (dark) inside a brighter body, a bright mediastinum
    draw.ellipse((6, 4, s - 6, s + 30), fill=150)
    lung_l = (14, 14, s // 2 - 6, s - 10)
    lung_r = (s // 2 + 6, 14, s - 14, s - 10)
    draw.ellipse(lung_l, fill=60)
    draw.ellipse(lung_r, fill=60)
    # image left = patient's right
    box = lung_l if zone.startswith("right") else lung_r
    x0, y0, x1, y1 = box
    upper = "upper" in zone
    cy = rng.uniform(y0 + 0.22 * (y1 - y0), y0 + 0.38 * (y1 - y0)) if upper else rng.uniform(
        y0 + 0.62 * (y1 - y0), y0 + 0.78 * (y1 - y0))
    cx = rng.uniform(x0 + 0.35 * (x1 - x0), x0 + 0.65 * (x1 - x0))
    r = rng.uniform(11, 15)
    bright = rng.randint(170, 230)
    if finding == "round opacity":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=bright)
    elif finding == "cavitary lesion":
        draw.ellipse((cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2), fill=bright)
        draw.ellipse((cx - r + 5, cy - r + 5, cx + r - 5, cy + r - 5), fill=40)
    else:
        half = rng.uniform(16, 20)
        draw.line((cx - half, cy - 3, cx + half, cy + 3), fill=bright, width=6)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(4, 9), arr.shape)
    arr = np.clip(arr * rng.uniform(0.85, 1.1) + noise, 0, 255).astype(np.uint8)
    return Sample(Image.fromarray(arr, mode="L"), TEMPLATE.format(finding=finding, zone=zone), finding, zone)


def _split_samples(split: str, count: int, seed: int) -> list[Sample]:
    rng = random.Random(f"{seed}-{split}")
    combos = [(f, z) for f in FINDINGS for z in ZONES]
    # balanced: every caption appears equally often, in random order
    wanted = [combos[i % len(combos)] for i in range(count)]
    rng.shuffle(wanted)
    return [make_sample(rng, f, z) for f, z in wanted]


def write_dataset(
    root: str | os.PathLike[str],
    *,
    layout: str = "roco",
    sizes: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write the synthetic data set under `root` in ``roco``, ``kaggle`` or ``both`` layouts.

    Returns `root`. The same seed writes the same pictures.
    """
    if layout not in ("roco", "kaggle", "both"):
        raise ValueError(f"layout must be roco, kaggle or both, got {layout!r}")
    check_vocabulary()
    root = Path(root)
    sizes = sizes or SPLIT_SIZES
    number = 0
    for split, count in sizes.items():
        samples = _split_samples(split, count, seed)
        rows = []
        for sample in samples:
            number += 1
            rows.append((f"ROCO_{number:05d}", f"PMC{900000 + number}_synthetic-{number:03d}.jpg", sample))
        if layout in ("roco", "both"):
            _write_roco(root / "data" / split / "radiology", rows)
        if layout in ("kaggle", "both"):
            _write_kaggle(root / "all_data" / split / "radiology", split, rows)
    return root


def _write_roco(folder: Path, rows: list[tuple[str, str, Sample]]) -> None:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    with (folder / "captions.txt").open("w", encoding="utf-8") as caps, \
            (folder / "licences.txt").open("w", newline="", encoding="utf-8") as lic:
        writer = csv.writer(lic)
        writer.writerow(["ROCO_ID", "PMC_ID", "CC"])
        for index, (roco_id, pmc_name, sample) in enumerate(rows):
            name = pmc_name if index % 5 == 4 else f"{roco_id}.jpg"
            sample.image.save(images / name, quality=95)
            caps.write(f"{roco_id}\t {sample.caption}\n")
            writer.writerow([roco_id, pmc_name, "CC BY"])


def _write_kaggle(folder: Path, split: str, rows: list[tuple[str, str, Sample]]) -> None:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    table = {"train": "traindata.csv", "validation": "valdata.csv", "test": "testdata.csv"}[split]
    with (folder / table).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "name", "caption"])
        for roco_id, _, sample in rows:
            name = f"{roco_id}.jpg"
            sample.image.save(images / name, quality=95)
            writer.writerow([roco_id, name, " " + sample.caption])
