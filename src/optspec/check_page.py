"""``optspec check --html PATH``: one self-contained page of a check report.

The page holds the target, the claimed and compared variants, the verdict, the table of
cases and behavioural checks, every failure, the diagnosis (explanation and first
divergence) and the error-versus-step plot: for every case row, the ratio
``max error / budget`` at each recorded step (maximum over the tensors and slots compared),
one panel per dtype, on log scales with the budget (ratio 1) drawn as a dashed line; a line
above it is a failure. The plot is a matplotlib PNG embedded as base64, so the page needs no
other file. It is written atomically (:func:`optspec.golden.write_atomic`).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

from optspec.checking.results import CaseResult, CheckReport
from optspec.checking.runner import format_report
from optspec.golden import write_atomic
from optspec.spec import variant_label

#: ratios at or below this (an exact match) are drawn at it: a log axis cannot show 0
FLOOR = 1e-6

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 8px; font-size: 13px; vertical-align: top; text-align: left; }
.conforms, .passed { background: #e3f5e1; } .fails, .failed { background: #fbe1e1; }
.deviation { background: #fff4d6; } .skipped, .not-applicable { background: #eee; }
p.verdict { font-weight: bold; padding: 6px 10px; display: inline-block; }
pre { background: #f6f6f6; padding: 8px; white-space: pre-wrap; font-size: 12px; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0 16px; }
"""


def ratio_series(row: CaseResult) -> tuple[list[int], list[float]]:
    """(steps, max over slots of error / budget) of one case row."""
    worst: dict[int, float] = {}
    for error in row.errors:
        worst[error.step] = max(worst.get(error.step, 0.0), error.ratio)
    steps = sorted(worst)
    return steps, [worst[s] for s in steps]


def plot_cases(report: CheckReport) -> bytes | None:
    """The error-versus-step PNG (a panel per dtype, a line per case row), or None when no row has errors."""
    rows = [c for c in report.cases if c.errors]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(c.dtype for c in rows))
    figure, axes = plt.subplots(1, len(dtypes), figsize=(4.6 * len(dtypes), 3.4), squeeze=False, sharey=True)
    for axis, dtype in zip(axes[0], dtypes):
        for row in (c for c in rows if c.dtype == dtype):
            steps, ratios = ratio_series(row)
            shown = [min(max(r, FLOOR), 1e30) if math.isfinite(r) else 1e30 for r in ratios]
            style = "-" if row.status != "fails" else "--"
            axis.plot(steps, shown, style, marker="o", markersize=3, label=row.case)
        axis.axhline(1.0, color="crimson", linestyle="--", linewidth=1, label="budget")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"{report.target}, {dtype}", fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6)
    axes[0][0].set_ylabel("max error / budget", fontsize=8)
    figure.suptitle(f"{report.rule}: error versus step", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _table(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], table_id: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{esc(css)}">' + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>" for css, cells in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(report: CheckReport, png: bytes | None) -> str:
    """The HTML page of a check report (self-contained: styles inline, plot embedded)."""
    esc = html.escape
    verdict_line = format_report(report).rsplit("\n", 1)[-1]
    title = f"optspec check {report.rule} {report.target}"
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{_CSS}</style></head><body>',
        f"<h1>{esc(title)}</h1>",
        f'<p id="verdict" class="verdict {esc(report.verdict)}">{esc(verdict_line)}</p>',
        "<ul>",
        f"<li>target: {esc(report.info.kind)} ({esc(report.info.qualname)}), "
        f"signature <code>{esc(report.info.signature)}</code></li>",
        f"<li>claimed variant: {esc(variant_label(report.variant))}</li>",
        f"<li>compared variant: {esc(variant_label(report.compared))}</li>",
    ]
    parts += [f"<li>known deviation: {esc(d.summary)} [{esc(d.id)}]</li>" for d in report.deviations]
    parts.append("</ul>")
    diagnosis = report.diagnosis
    parts.append('<h2>Diagnosis</h2><div id="diagnosis">')
    if diagnosis is None:
        parts.append("<p>None needed: every case conforms.</p>")
    else:
        parts.append(f"<p>{esc(diagnosis.explanation)}</p>")
        if diagnosis.first_divergence:
            parts.append(f"<p>First divergence:</p><pre>{esc(diagnosis.first_divergence)}</pre>")
    parts.append("</div>")
    parts.append(
        "<h2>Error versus step</h2><p>Maximum error divided by its budget at each recorded step (log scales); "
        "above the dashed line is a failure.</p>"
    )
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img class="plot" alt="{esc(report.rule)}: error / budget per step" src="data:image/png;base64,{data}">')
    else:
        parts.append("<p>No case produced a trajectory to plot.</p>")
    parts.append("<h2>Cases</h2>")
    case_rows = []
    for c in report.cases:
        worst = c.worst_ratio
        shown = "" if worst is None else (f"{worst:.3g}" if math.isfinite(worst) else "inf")
        shown = c.failure if c.failure not in ("", "numeric") else shown
        case_rows.append((c.status, (c.case, c.dtype, c.status, shown, c.flag)))
    parts.append(_table(("case", "dtype", "status", "worst error / budget", "flag"), case_rows, "cases"))
    if report.behaviour:
        parts.append("<h2>Behavioural checks</h2>")
        behaviour_rows = [
            (b.status.replace(" ", "-"), (b.name, b.status + (f" (follows from: {b.follows})" if b.follows else ""), b.message))
            for b in report.behaviour
        ]
        parts.append(_table(("check", "status", "message"), behaviour_rows, "behaviour"))
    failures = [f"case {c.case} ({c.dtype}): {c.message}" for c in report.cases if c.status == "fails"]
    failures += [f"behaviour {b.name}: {b.message}" for b in report.behaviour if b.status == "failed"]
    if failures:
        parts.append('<h2>Failures</h2><ul id="failures">' + "".join(f"<li>{esc(f)}</li>" for f in failures) + "</ul>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("<h2>Full report</h2>")
    parts.append(f"<pre>{esc(format_report(report))}</pre>")
    # Records the plot's decoded width once loaded, so a headless browser's DOM shows it rendered.
    parts.append(
        "<script>window.addEventListener('load', () => document.querySelectorAll('img.plot')"
        ".forEach(i => { i.dataset.renderedWidth = i.naturalWidth; }));</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_page(report: CheckReport, path: Path) -> None:
    """Write the page atomically."""
    write_atomic(path, page(report, plot_cases(report)))
