"""`sfg_run report`: one self-contained HTML page per model_dir, checked by parsing it and opening every image, and
(where a Chromium browser is installed) by rendering it in headless Chromium and asking the browser whether every
image loaded."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Page(HTMLParser):
    """Collects the images, sections, tables and scripts of a page."""

    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attributes)
        elif tag == "section":
            self.sections.append(attributes.get("id", ""))
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data.strip())

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False


def open_image(source: str, folder: Path) -> Image.Image:
    """Opens an `<img src>`: a PNG data URI or a file relative to the page."""
    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        assert header == "data:image/png;base64", header
        data = base64.b64decode(payload, validate=True)
    else:
        data = (folder / source).read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def report(cohort, trained_run, tmp_path_factory):
    from test_cli import run, write_config

    from sfg_keras.cli import run_action

    folder, _ = trained_run
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(folder / "model", root / "model",
                    ignore=shutil.ignore_patterns("export", "output*", "analysis", "report.html"))
    config = str(write_config(root, cohort))
    run_action("inference", config)  # Monte-Carlo, 3 samples: CT, CT std, labels, entropy per subject
    run_action("evaluation", config)
    result = run(["report", "-c", config])
    path = root / "model" / "report.html"
    assert f"Report: {path}" in result.stdout
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return {"path": path, "page": page, "model_dir": root / "model"}


def test_report_is_one_page_whose_every_image_opens(report):
    page, model_dir = report["page"], report["model_dir"]
    assert "script" not in page.tags  # nothing to run: readable without JavaScript
    assert page.sections == ["run", "curves", "evaluation", "outputs_0", "grouping"]
    assert not [p for p in report["path"].parent.iterdir() if p.suffix == ".png"]  # images are embedded
    for image in page.images:
        opened = open_image(image["src"], report["path"].parent)
        assert opened.format == "PNG" and min(opened.size) > 50, image.get("alt")
        assert opened.convert("L").getextrema()[0] != opened.convert("L").getextrema()[1]  # not blank
    alts = [image["alt"] for image in page.images]
    summary = json.loads((model_dir / "analysis" / "grouping_summary.json").read_text())
    layers = [layer["layer"] for layer in summary["layers"]]
    assert {"training and validation curves", "group shares per layer"} <= set(alts)
    assert [alt for alt in alts if alt.startswith("ternary_")] == [f"ternary_{name}" for name in sorted(layers)]
    with open(model_dir / "output" / "inferred.csv", newline="") as handle:
        subjects = [row["subject"] for row in csv.DictReader(handle)]
    shown = [alt.split(":")[0] for alt in alts if "middle axial slice" in alt]
    assert shown == subjects
    assert all("MR, synthetic CT, labels, CT std, label entropy" in alt for alt in alts if "middle axial" in alt)
    with open(model_dir / "evaluation" / "mr_ct_metrics_summary.csv", newline="") as handle:
        mean = next(row for row in csv.DictReader(handle) if row["statistic"] == "mean")
    assert f"{float(mean['mae']):.4g}" in page.cells  # the evaluation table holds the evaluation


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip(f"no Chromium browser installed (looked for {', '.join(BROWSERS)}); the report is checked by "
                    "parsing it and opening every image instead (apt-get install chromium to run this test)")
    # A copy of the page with a probe that asks the browser, once everything loaded, which images it could draw.
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var images = Array.prototype.slice.call(document.images);"
        "var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })"
        ".map(function (i) { return i.alt; });"
        "var out = document.createElement('pre'); out.id = 'sfg-probe';"
        "out.textContent = JSON.stringify({images: images.length, broken: broken,"
        " width: document.documentElement.scrollWidth});"
        "document.body.appendChild(out); });</script>"
    )
    checked = tmp_path / "report_probe.html"
    checked.write_text(report["path"].read_text(encoding="utf-8").replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--window-size=1280,2000", "--virtual-time-budget=20000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="sfg-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stdout[-2000:]
    state = json.loads(html.unescape(match.group(1)))
    assert state["images"] == len(report["page"].images) > 5
    assert state["broken"] == []
    assert state["width"] <= 1280  # nothing wider than the window
