"""The fonts of the PDF report: TrueType, found on the system, embedded by reportlab as subsets.

A PDF that names a font without embedding it shows whatever the reader substitutes, and the base
fonts every PDF reader has (Helvetica and its kin) hold Latin-1 only. The report therefore uses
DejaVu Sans, Sans Bold and Sans Mono, which cover Latin, Greek, Cyrillic and the symbols of
radiology text (µ, ≥, °, ±), from Debian's ``fonts-dejavu-core`` (or Fedora's, Arch's and
Homebrew's packages, or the copy matplotlib ships); for the characters DejaVu lacks (Chinese,
Japanese, Korean) it uses Droid Sans Fallback (Debian's ``fonts-droid-fallback``) when it is
installed. :meth:`PdfFonts.markup` puts each run of text in the font that has its glyphs; a
character no font has becomes U+FFFD, so the reader sees that something is missing.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from medblip_dicom.errors import MissingDependencyError

logger = logging.getLogger(__name__)

#: Where the DejaVu fonts are looked for, in order (Debian/Ubuntu, Fedora, Arch, macOS/Homebrew).
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu-sans-fonts"),
             Path("/usr/share/fonts/dejavu-sans-mono-fonts"), Path("/usr/share/fonts/dejavu"),
             Path("/usr/share/fonts/TTF"), Path("/usr/local/share/fonts"), Path("/opt/homebrew/share/fonts"),
             Path("/Library/Fonts"))
FONT_FILES = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "mono": "DejaVuSansMono.ttf"}
#: TrueType fonts used, in order, for the characters DejaVu Sans has no glyph for; of fonts with one
#: face name only the first found is used (two would share one name in the PDF). Debian's
#: DroidSansFallback.ttf has Hangul, which its DroidSansFallbackFull.ttf lacks.
FALLBACK_FONTS = (Path("/usr/share/fonts-droid-fallback/truetype/DroidSansFallback.ttf"),
                  Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
                  Path("/usr/share/fonts/google-droid-sans-fonts/DroidSansFallbackFull.ttf"))
_FONT_HELP = ("install the DejaVu fonts (Debian/Ubuntu: apt-get install fonts-dejavu-core; Fedora: dnf install "
              "dejavu-sans-fonts dejavu-sans-mono-fonts), or pass font_dirs= a folder holding "
              + ", ".join(FONT_FILES.values()))


@dataclass(frozen=True)
class PdfFonts:
    """The registered reportlab font names, and the fallbacks for characters DejaVu Sans lacks."""

    regular: str
    bold: str
    mono: str
    coverage: frozenset[int]
    fallbacks: tuple[tuple[str, frozenset[int]], ...]

    def font_for(self, char: str) -> str | None:
        """The font that shows `char` (None: none does; the regular font is the default)."""
        code = ord(char)
        if code in self.coverage or char in "\n\t ":
            return self.regular
        return next((name for name, chars in self.fallbacks if code in chars), None)

    def markup(self, value: str, missing: set[str]) -> str:
        """`value` as reportlab paragraph markup: XML-escaped, runs of characters DejaVu lacks in a
        fallback font, characters no font has replaced by U+FFFD (and added to `missing`)."""
        parts: list[str] = []
        run_font: str | None = self.regular
        run: list[str] = []

        def flush() -> None:
            if run:
                escaped = html.escape("".join(run), quote=False)
                parts.append(escaped if run_font == self.regular else f'<font name="{run_font}">{escaped}</font>')
                run.clear()

        for char in value:
            font = self.font_for(char)
            if font is None:
                missing.add(char)
                char, font = "\ufffd", self.regular
            if font != run_font:
                flush()
                run_font = font
            run.append(char)
        flush()
        return "".join(parts)


@functools.lru_cache(maxsize=4)
def register_fonts(font_dirs: tuple[Path, ...] | None = None) -> PdfFonts:
    """Find and register the DejaVu fonts (and the fallbacks that are installed) with reportlab, once."""
    try:
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont
    except ImportError:
        raise MissingDependencyError("the PDF report needs reportlab: pip install 'medblip-dicom[pdf]'") from None
    names = {}
    for role, path in _font_files(font_dirs).items():
        name = f"medblip-{path.stem}"
        try:
            pdfmetrics.registerFont(TTFont(name, str(path)))
        except Exception as exc:  # noqa: BLE001 - reportlab raises its own TTFError and plain errors alike
            raise MissingDependencyError(f"the PDF font {path} cannot be used ({exc}); {_FONT_HELP}") from None
        names[role] = name
    regular = pdfmetrics.getFont(names["regular"])
    fallbacks = []
    faces = set()
    for index, path in enumerate(p for p in FALLBACK_FONTS if p.is_file()):
        name = f"medblip-fallback-{index}"
        try:
            font = TTFont(name, str(path))
        except Exception as exc:  # noqa: BLE001 - an unusable optional font is skipped
            logger.warning("skipping the fallback font %s (%s)", path, exc)
            continue
        if font.face.name in faces:
            continue
        faces.add(font.face.name)
        pdfmetrics.registerFont(font)
        fallbacks.append((name, frozenset(font.face.charToGlyph)))
    return PdfFonts(names["regular"], names["bold"], names["mono"], frozenset(regular.face.charToGlyph),
                    tuple(fallbacks))


def _font_files(font_dirs: tuple[Path, ...] | None) -> dict[str, Path]:
    """Each of FONT_FILES in the first folder that has it (Fedora keeps Sans and Sans Mono apart)."""
    candidates = [Path(d) for d in font_dirs] if font_dirs is not None else [*FONT_DIRS, *_matplotlib_fonts()]
    found = {role: next((folder / file for folder in candidates if (folder / file).is_file()), None)
             for role, file in FONT_FILES.items()}
    missing = [FONT_FILES[role] for role, path in found.items() if path is None]
    if missing:
        raise MissingDependencyError(f"the PDF report's fonts {', '.join(missing)} were not found in "
                                     f"{', '.join(str(c) for c in candidates)}; {_FONT_HELP}")
    return {role: path for role, path in found.items() if path is not None}


def _matplotlib_fonts() -> list[Path]:
    """matplotlib's own copy of DejaVu (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) / "mpl-data" / "fonts" / "ttf" for location in spec.submodule_search_locations]
