"""``optspec check --html PATH``: one self-contained page (plot, cases, diagnosis), rendered in headless Chromium."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from chromium import dump_dom

from optspec.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """The text of the elements with an id, the case-table rows and the images of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, list[str]] = {}
        self.images: list[dict[str, str]] = []
        self.case_rows = 0
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
            return
        if tag == "tr" and "cases" in self._open:
            self.case_rows += 1
        self._open.append(values.get("id"))
        if values.get("id"):
            self.by_id.setdefault(values["id"], [])

    def handle_endtag(self, tag: str) -> None:
        if tag != "img" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in {n for n in self._open if n}:
            self.by_id[name].append(data)

    def text(self, element_id: str) -> str:
        return " ".join("".join(self.by_id.get(element_id, [])).split())


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("check-html") / "sub" / "adam.html"
    # torch.optim.AdamW claimed as adam fails with the diagnosis adamw (tests/test_check.py)
    code = main(["check", "adam", "torch.optim:AdamW", "--no-behaviour", "--html", str(path)])
    assert code == 1, f"optspec check adam torch.optim:AdamW exits 1 (does not conform), got {code}"
    return path


def test_page_is_written_atomically_and_self_contained(page: Path) -> None:
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "behaves like adamw" in text, text[:500]
    assert "<link" not in text and 'src="http' not in text, "the page must load nothing from elsewhere"
    leftovers = [p.name for p in page.parent.iterdir() if p.name != page.name]
    assert not leftovers, f"the atomic write left temporary files: {leftovers}"


def test_page_renders_plot_and_diagnosis_in_headless_chromium(page: Path) -> None:
    parsed = _Page()
    parsed.feed(dump_dom(page))
    assert "does NOT conform to adam" in parsed.text("verdict"), parsed.text("verdict")
    assert "behaves like adamw" in parsed.text("diagnosis"), f"diagnosis shown: {parsed.text('diagnosis')!r}"
    assert "First divergence" in parsed.text("diagnosis"), parsed.text("diagnosis")
    assert "case knobs (float64)" in parsed.text("failures"), parsed.text("failures")
    assert parsed.case_rows >= 6, f"the case table has {parsed.case_rows} rows (3+ cases x 2 dtypes expected)"
    plots = [img for img in parsed.images if "plot" in img.get("class", "")]
    assert len(plots) == 1, f"one error-versus-step plot expected, found {len(plots)}"
    src = plots[0].get("src", "")
    assert src.startswith("data:image/png;base64,"), f"plot is not an embedded PNG: {src[:60]!r}"
    assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE), "embedded plot data is not a PNG"
    width = int(plots[0].get("data-rendered-width", "0") or 0)
    assert width > 100, f"the browser did not decode the plot (naturalWidth {width})"


@pytest.mark.parametrize("where", ["missing-dir/nested/out.html", "."])
def test_a_bad_path_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    blocker = tmp_path / "missing-dir"
    blocker.write_text("a file where a directory is needed")
    target = tmp_path / where
    code = main(["check", "sgd", "torch.optim:SGD", "--html", str(target)])
    out, err = capsys.readouterr()
    assert code == 2, f"--html {target} must exit 2 before any work, got {code}; stdout: {out}"
    assert err.startswith("optspec: error: --html ") and len(err.strip().splitlines()) == 1, repr(err)
    assert not out, f"nothing runs before the path is checked: {out!r}"
