"""``optspec report`` writes HTML, Markdown, JSON and plots; the HTML renders in a browser."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from chromium import dump_dom

from optspec.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Dom(HTMLParser):
    """Collects the matrix cells and the plot images of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[dict[str, str]] = []
        self._in_matrix = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "table" and values.get("id") == "matrix":
            self._in_matrix = True
        elif tag == "td" and self._in_matrix:
            self._cell = []
        elif tag == "img":
            self.images.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_matrix = False
        elif tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("report")
    golden = Path(__file__).parents[1] / "conformance" / "golden"
    code = main(["report", "--rule", "adamax", "--impl", "torch.for-loop", "--dir", str(golden), "--out", str(out)])
    assert code == 0, f"optspec report exited with {code}"
    return out


def test_report_files(report_dir: Path) -> None:
    for name in ("report.html", "report.md", "report.json", "plots/adamax.png"):
        assert (report_dir / name).is_file(), f"optspec report did not write {name} in {report_dir}"
    doc = json.loads((report_dir / "report.json").read_text())
    cell = doc["matrix"]["adamax"]["torch.for-loop"]
    assert cell["status"] in ("conforms", "known deviation", "fails", "error"), f"unexpected matrix cell {cell}"
    assert doc["results"] and all(r["errors"] for r in doc["results"] if r["status"] != "skipped"), (
        "every check that ran must carry its per-step errors for the plots"
    )
    markdown = (report_dir / "report.md").read_text()
    assert "| adamax |" in markdown and "plots/adamax.png" in markdown, (
        f"the Markdown page lacks the matrix row or plot:\n{markdown}"
    )
    assert (report_dir / "plots" / "adamax.png").read_bytes().startswith(PNG_SIGNATURE), "plots/adamax.png is not a PNG"


def test_html_renders_in_headless_chromium(report_dir: Path) -> None:
    dumped = dump_dom(report_dir / "report.html")
    dom = _Dom()
    dom.feed(dumped)
    assert dom.cells, f"the rendered page has no matrix cells; DOM starts: {dumped[:500]!r}"
    assert any(s in dom.cells[0] for s in ("conforms", "known deviation", "fails", "error")), (
        f"the matrix cell shows no status: {dom.cells}"
    )
    plots = [img for img in dom.images if "plot" in img.get("class", "")]
    assert plots, "the rendered page has no plot images"
    for img in plots:
        src = img.get("src", "")
        assert src.startswith("data:image/png;base64,"), f"plot is not an embedded PNG: {src[:60]!r}"
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE), "embedded plot data is not a PNG"
        width = int(img.get("data-rendered-width", "0") or 0)
        assert width > 100, f"the browser did not decode the plot {img.get('alt')!r} (naturalWidth {width})"
