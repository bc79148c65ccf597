"""Check in headless Chromium that a published asv dashboard draws benchmark graphs with data.

What counts as proof, for each benchmark with results (``time_step``, ``track_ratio``,
``track_state_bytes``):

1. the published data: ``index.json`` lists the benchmark and its graph file holds at least
   one non-null value for the last commit; the combinations with data (first parameter set
   and dtype that have any) are selected in the page's URL, the legend hidden;
2. the rendered DOM (``--dump-dom`` after the page's JavaScript ran): flot's canvas exists,
   the y axis carries numeric tick labels, and for ``time_step`` the axis is scaled to the
   data: its unit label (e.g. "microseconds") and its largest tick, converted to seconds, lie
   between the largest selected value and three times it (an empty graph has no ticks);
3. the screenshot: the plot area (right of the sidebar, below the navigation bar) contains
   coloured pixels, which only the data series draw (grid, axes and text are grey or black).

The dashboard must be served over http (``python -m http.server``); its JavaScript has to load
offline, see localize_dashboard.py. Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,900",
    "--virtual-time-budget=20000",
)
BENCHMARKS = ("optimizer_step.Step.time_step", "optimizer_step.Roofline.track_ratio", "optimizer_step.Step.track_state_bytes")
TIME_UNITS = {"nanoseconds": 1e-9, "microseconds": 1e-6, "milliseconds": 1e-3, "seconds": 1.0}
#: plot area of the 1400x900 screenshot: right of asv's sidebar, below its navigation bar
PLOT_BOX = (250, 100, 1395, 760)


def chromium(binary: str, profile: Path, url: str, *extra: str) -> str:
    """Run headless Chromium with a fresh profile; returns stdout."""
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def graph_file(html: Path, name: str) -> Path:
    files = sorted(p for p in html.glob(f"graphs/branch-*/**/{name}.json") if "/machine-" in str(p))
    if not files:
        raise AssertionError(f"{name}: no graph data under {html}/graphs")
    return files[0]


def selection(index: dict, html: Path, name: str) -> tuple[dict[str, list[str]], list[float]]:
    """Parameter values to select (combinations with data) and the selected values."""
    params: list[list[str]] = index["benchmarks"][name]["params"]
    names: list[str] = index["benchmarks"][name]["param_names"]
    series = json.loads(graph_file(html, name).read_text())
    last = series[-1][1]
    combos = [combo for combo, value in zip(itertools.product(*params), last) if value is not None]
    if not combos:
        raise AssertionError(f"{name}: the published graph has no value for the last commit")
    # one parameter set and dtype (the first with data), every rule and implementation with data
    fixed = combos[0][2:]
    chosen = [c for c in combos if c[2:] == fixed][:8]
    selected = {n: sorted({c[i] for c in chosen}) for i, n in enumerate(names)}
    values = [v for combo, v in zip(itertools.product(*params), last) if v is not None and combo in chosen]
    return selected, values


def page_url(base: str, name: str, selected: dict[str, list[str]]) -> str:
    query = "&".join(f"p-{key}={quote(value)}" for key, values in selected.items() for value in values)
    return f"{base.rstrip('/')}/#{name}?{query}&show-legend=false"


def tick_values(dom: str) -> list[float]:
    labels = re.findall(r"class=\"flot-tick-label tickLabel\"[^>]*>([^<]*)<", dom)
    out = []
    for label in labels:
        try:
            out.append(float(label.replace(",", "")))
        except ValueError:
            continue
    return out


def coloured_pixels(png: Path) -> int:
    from PIL import Image

    data = Image.open(png).convert("RGB").crop(PLOT_BOX).tobytes()
    return sum(1 for i in range(0, len(data), 3) if max(data[i : i + 3]) - min(data[i : i + 3]) > 60)


def check(url: str, html: Path, binary: str, workdir: Path) -> list[str]:
    index = json.loads((html / "index.json").read_text())
    failures: list[str] = []
    for number, name in enumerate(BENCHMARKS):
        if name not in index["benchmarks"]:
            failures.append(f"{name}: not in the published index.json")
            continue
        try:
            selected, values = selection(index, html, name)
        except AssertionError as exc:
            failures.append(str(exc))
            continue
        target = page_url(url, name, selected)
        dom = chromium(binary, workdir / f"profile-dom-{number}", target, "--dump-dom")
        shot = workdir / f"{name}.png"
        chromium(binary, workdir / f"profile-shot-{number}", target, f"--screenshot={shot}")
        ticks = tick_values(dom)
        pixels = coloured_pixels(shot)
        report = f"{name}: {len(values)} values selected, {len(ticks)} numeric y ticks, {pixels} coloured plot pixels"
        if "js_load_failure" in dom and "Can not determine continental origin" in dom:
            failures.append(f"{name}: the dashboard's JavaScript did not load")
            continue
        if "flot-base" not in dom:
            failures.append(f"{report}: no flot canvas in the DOM")
        if len(ticks) < 3:
            failures.append(f"{report}: the y axis has no numeric ticks")
        if pixels < 10:
            failures.append(f"{report}: no data drawn in the plot area (screenshot {shot})")
        if name.endswith("time_step") and ticks:
            unit = re.findall(r"class=\"y1Label axisLabels\"[^>]*>([^<]*)<", dom)
            scale = TIME_UNITS.get(unit[0].strip() if unit else "", None)
            if scale is None:
                failures.append(f"{report}: y axis label {unit!r} is not a time unit")
            else:
                top = max(ticks) * scale
                if not max(values) <= top <= 3 * max(values):
                    failures.append(f"{report}: y axis tops at {top:.3g} s, data max {max(values):.3g} s")
                else:
                    report += f", axis 0..{top:.3g} s for data up to {max(values):.3g} s"
        print(("ok   " if not any(f.startswith(name) for f in failures) else "FAIL ") + report)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="where the dashboard is served, e.g. http://127.0.0.1:8000/")
    parser.add_argument("--html", required=True, type=Path, help="the published html_dir (for its data files)")
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--workdir", type=Path, default=None, help="profiles and screenshots (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="asv-dashboard-"))
    workdir.mkdir(parents=True, exist_ok=True)
    failures = check(args.url, args.html, args.chromium, workdir)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
