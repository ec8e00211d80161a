"""The documentation: a short README that leads to a site which builds cleanly, with working links.

The README is what a newcomer reads first: at most 250 lines, the quickstart and the test command
at its top, one after the other, and links into the site. The site (Sphinx + MyST, `docs/`) is
built here with warnings as errors, so a broken page link, a heading anchor that does not exist, a
page left out of the contents or a docstring Sphinx cannot parse fails the test suite. Benchmark
figures live in `bench/RESULTS.md` only: pages include that file instead of copying its tables.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import in_ci

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "RESULTS.md"
MAX_README_LINES = 250
BUILD_TIMEOUT_S = 600  # the build takes well under a minute on 2 idle cores; the machine is shared

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_VERSION = re.compile(r"(?:Python |[=<>~]=?|\bv)\d+(?:\.\d+)+")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    return [README, ROOT / "SECURITY.md", *sorted(DOCS.rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links and images of `path` that point into this repository."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text()))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        targets.append(target)
    return targets


def h2_headings(text: str) -> list[str]:
    return [line[3:].strip() for line in _FENCE.sub("", text).splitlines() if line.startswith("## ")]


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {MAX_README_LINES} and move the rest into docs/")


def test_the_readme_starts_with_the_quickstart_then_the_test_command():
    text = README.read_text()
    headings = h2_headings(text)
    assert len(headings) >= 2 and headings[0].startswith("Quickstart") and headings[1] == "Run the tests", headings
    tests_section = text.split("## Run the tests", 1)[1].split("\n## ", 1)[0]
    assert "```bash\npytest -q\n```" in tests_section


def test_the_readme_links_the_documentation_site():
    links = {target.split("#", 1)[0] for target in relative_links(README)}
    assert "docs/index.md" in links, "README.md must link the documentation site (docs/index.md)"
    assert any(link.startswith("docs/") and link != "docs/index.md" for link in links)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file(path):
    missing = []
    for target in relative_links(path):
        file_part = target.split("#", 1)[0]
        if file_part and not (path.parent / file_part).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_benchmark_tables_are_included_not_copied():
    """A figure of a bench table appears in bench/RESULTS.md only; the README and the pages link or
    include that file, so a rerun of a bench never leaves an old copy behind."""
    table = "\n".join(line for line in RESULTS.read_text().splitlines() if line.startswith("|"))
    figures = set(re.findall(r"(?<![\d.])\d+\.\d\d(?!\d)", table))
    assert figures, "bench/RESULTS.md holds no table figures to compare with"
    copied = {}
    for path in markdown_files():
        text = _VERSION.sub("", path.read_text())  # "Python 3.11" is a version, not a figure
        found = sorted(f for f in figures if re.search(rf"(?<![\d.]){re.escape(f)}(?!\d)", text))
        if found:
            copied[str(path.relative_to(ROOT))] = found
    assert not copied, f"figures copied from bench/RESULTS.md (link or include it instead): {copied}"


def _sphinx_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("sphinx", "myst_parser", "furo"))


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    if not _sphinx_available():
        message = "Sphinx, myst-parser or furo is not installed (pip install -e '.[docs]')"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / "html"
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
    assert done.returncode == 0 and not warnings, "the documentation site does not build cleanly:\n" + "\n".join(
        warnings or (done.stdout + done.stderr).splitlines()[-30:])

    # Every page of docs/ became a page of the site.
    for page in DOCS.rglob("*.md"):
        assert (out / page.relative_to(DOCS).with_suffix(".html")).is_file(), f"{page} was not built"
    # The API reference was generated from the docstrings, not left empty.
    api = (out / "api.html").read_text()
    assert 'id="medblip_dicom.api.caption_dicom"' in api and 'id="medblip_dicom.captioner.Captioner"' in api
    # The benchmark results and the changelog are the repository's own files, shown in place.
    first_run = next(line[4:].strip() for line in RESULTS.read_text().splitlines() if line.startswith("### "))
    assert first_run.split(" — ")[0] in (out / "benchmarks.html").read_text()
    first_release = h2_headings((ROOT / "CHANGELOG.md").read_text())[0].strip("[]")
    assert first_release in (out / "changelog.html").read_text()
