"""The report opened in a real browser (headless Chromium): what a user sees, offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from shared.report import render_report

from .report_fixtures import detection_report

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian `chromium`) is not installed")
SECTION_IDS = ("summary", "data-quality", "metrics", "pr-curves", "confusion-matrix", "samples")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium with everything that could reach the network switched off, and a throwaway profile."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_report(detection_report()), encoding="utf-8")
    return path


def test_the_browser_builds_every_section_with_images_and_boxes(report_file: Path, tmp_path: Path) -> None:
    result = chromium(tmp_path / "profile", "--dump-dom", report_file.as_uri())

    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for section_id in SECTION_IDS:
        assert f'id="{section_id}"' in dom
    samples = dom[dom.index('id="samples"') :]
    assert samples.count('<svg class="sample"') == 4
    assert samples.count("data:image/jpeg;base64,") == 4
    assert 'class="box gt"' in samples and 'class="box pred"' in samples
    assert dom.count('<svg class="pr"') == 4


def test_the_screenshot_shows_a_rendered_page(report_file: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"

    result = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", report_file.as_uri())

    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file()
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, charts, tables: not a blank page
        assert rgb.getpixel((5, 5)) == (15, 23, 42)  # the dark header was styled, so the CSS applied


def test_the_browser_shows_tables_headed_by_their_rows_and_no_eta_after_training(
    report_file: Path, tmp_path: Path
) -> None:
    result = chromium(tmp_path / "profile", "--dump-dom", report_file.as_uri())

    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    quality = dom[dom.index('id="data-quality"') : dom.index('id="metrics"')]
    headings = re.findall(r"<h3>([^<]+)</h3><table[^>]*><thead><tr><th>([^<]*)</th>", quality)
    assert ("Images per split", "Split") in headings and ("Boxes per class", "Class") in headings
    assert ("Rows skipped", "Reason") in headings
    split_rows = re.search(r"<h3>Images per split</h3>(.*?)</table>", quality).group(1)
    assert re.findall(r"<tr><td>([a-z]+)</td>", split_rows) == ["training", "validation", "test"]
    summary = dom[dom.index('id="summary"') : dom.index('id="data-quality"')]
    assert "<th>Step</th>" in summary and "ETA" not in summary and "Eta" not in summary
