"""Conformance reports: a self-contained HTML page, a Markdown page and the JSON behind them.

:func:`collect` runs the conformance matrix (every rule x installed implementation x golden
case x dtype, :func:`optspec.conformance.run_checks`, in worker processes); :func:`write_report` writes to a
directory:

* ``report.json`` — every check's result (status, compared variant, deviations, and the
  per-step maximum error against its budget from :class:`optspec.conformance.StepError`);
* ``report.md`` — the rule x implementation matrix (conforms / known deviation / fails /
  error / skipped), the variant each implementation really follows (the registry's
  deviations), failures, and the plots as PNG files under ``plots/``;
* ``report.html`` — the same, self-contained: plots embedded as base64 PNG.

Plots (matplotlib, Agg backend) show, per rule and implementation, the ratio
``max error / budget`` at each recorded step (maximum over the rule's golden tests, tensors
and slots), one line per dtype, on a log scale with the budget (ratio 1) drawn: a line
above it is a failure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optspec import __version__
from optspec.conformance import (
    DTYPES,
    RUN_FORMAT,
    CheckResult,
    enumerate_checks,
    load_goldens,
    matrix,
    missing_in,
    result_record,
)
from optspec.errors import UsageError
from optspec.golden import write_atomic
from optspec.impls.base import Implementation
from optspec.matrix_workers import run_in_workers
from optspec.progress import Progress
from optspec.spec import SpecLibrary

STATUS_ORDER = ("error", "fails", "known deviation", "conforms", "skipped")


@dataclass(frozen=True)
class ReportData:
    results: tuple[CheckResult, ...]
    implementations: tuple[str, ...]
    unavailable: Mapping[str, str]
    specs: Mapping[str, Mapping[str, str]]
    environment: Mapping[str, Any]


def collect(
    library: SpecLibrary,
    golden_dir: Path,
    implementations: Sequence[Implementation],
    rules: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    jobs: int = 1,
    spec_dirs: Sequence[Path] = (),
    progress: Progress | None = None,
) -> ReportData:
    """Run the conformance matrix for the report (in ``jobs`` worker processes; see optspec.matrix_workers)."""
    from optspec.checking.runner import environment

    goldens = load_goldens(library, golden_dir, rules)
    checks = enumerate_checks(library, goldens, implementations, dtypes)
    if progress is not None:
        progress.set_total(len(checks))
    on_group = None if progress is None else (lambda rule, impl, n: progress.update(f"{rule} x {impl}", n))
    results = tuple(run_in_workers(checks, jobs, spec_dirs, golden_dir, on_group))
    names = tuple(i.name for i in implementations)
    unavailable = {i.name: str(i.unavailable()) for i in implementations if i.unavailable()}
    specs = {name: {"path": library.get(name).path, "sha256": library.get(name).sha256} for name in goldens}
    return ReportData(results, names, unavailable, specs, environment())


# --------------------------------------------------------------------------- data


def follows(results: Iterable[CheckResult]) -> str:
    """The variant an implementation really follows, from the deviations its checks used."""
    notes = {}
    for result in results:
        for deviation in result.deviations:
            notes[deviation.id] = deviation.summary
    return "; ".join(sorted(set(notes.values()))) if notes else "as specified"


def _follows_text(status: str, results: Sequence[CheckResult]) -> str:
    if status == "skipped":
        return "not run"
    text = follows(results)
    if status in ("fails", "error"):
        return "does not conform (see Failures)" if text == "as specified" else f"{text}; does not conform (see Failures)"
    return text


def document(data: ReportData) -> dict[str, Any]:
    table = matrix(data.results)
    cells = {
        rule: {
            impl: {
                "status": cell.status,
                "counts": dict(cell.counts),
                "follows": _follows_text(cell.status, [r for r in data.results if r.rule == rule and r.implementation == impl]),
                "deviations": sorted(cell.deviations),
            }
            for impl, cell in row.items()
        }
        for rule, row in table.items()
    }
    return {
        "format": "optspec-report/1",
        "optspec": __version__,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": dict(data.environment),
        "specs": {k: dict(v) for k, v in data.specs.items()},
        "implementations": list(data.implementations),
        "unavailable": dict(data.unavailable),
        "matrix": cells,
        "results": [result_record(r) for r in data.results],
    }


# --------------------------------------------------------------------------- plots


def ratio_series(results: Iterable[CheckResult]) -> dict[str, tuple[list[int], list[float]]]:
    """dtype -> (steps, max over tests and slots of error / budget) for one rule x implementation."""
    worst: dict[str, dict[int, float]] = {}
    for result in results:
        for error in result.errors:
            per = worst.setdefault(result.dtype, {})
            per[error.step] = max(per.get(error.step, 0.0), error.ratio)
    return {dtype: (sorted(per), [per[s] for s in sorted(per)]) for dtype, per in sorted(worst.items())}


def plot_rule(rule: str, implementations: Sequence[str], results: Sequence[CheckResult]) -> bytes:
    """One PNG: a panel per implementation, error/budget against step, one line per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [i for i in implementations if any(r.implementation == i and r.errors for r in results)]
    figure, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 2.8), squeeze=False, sharey=True)
    tiny = 1e-6
    for axis, impl in zip(axes[0], shown):
        for dtype, (steps, ratios) in ratio_series(r for r in results if r.implementation == impl).items():
            axis.plot(steps, [max(r, tiny) for r in ratios], marker="o", markersize=3, label=dtype)
        axis.axhline(1.0, color="crimson", linestyle="--", linewidth=1, label="budget")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(impl, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].set_ylabel("max error / budget", fontsize=8)
    if shown:
        axes[0][0].legend(fontsize=7)
    figure.suptitle(rule, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


# --------------------------------------------------------------------------- pages


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def markdown(doc: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    impls = [i for i in doc["implementations"] if any(i in row for row in doc["matrix"].values())]
    lines = [
        "# optspec conformance report",
        "",
        f"optspec {doc['optspec']}, generated {doc['generated']}; "
        + ", ".join(f"{k} {v}" for k, v in doc["environment"]["packages"].items() if v),
        "",
        "## Matrix",
        "",
        "Each cell: status over every golden test and dtype; below it, the variant the implementation really follows.",
        "",
        "| rule | " + " | ".join(impls) + " |",
        "|---|" + "---|" * len(impls),
    ]
    for rule in sorted(doc["matrix"]):
        row = doc["matrix"][rule]
        cells = [f"**{row[i]['status']}**<br>{row[i]['follows']}" if i in row else "-" for i in impls]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    if doc["unavailable"]:
        lines += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in doc["unavailable"].items())]
    failures = [r for r in doc["results"] if r["status"] in ("fails", "error")]
    lines += ["", "## Failures", ""]
    lines += [f"- `{r['id']}`: {r['message']}" for r in failures] or ["None."]
    lines += [
        "",
        "## Error versus step",
        "",
        "Maximum error divided by its budget at each recorded step (log scales); above the dashed line is a failure.",
        "",
    ]
    for rule, path in plots.items():
        lines += [f"### {rule}", "", f"![{rule}: error / budget per step]({path})", ""]
    lines += ["The data behind this page: [report.json](report.json)."]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 8px; font-size: 13px; vertical-align: top; }
td.conforms { background: #e3f5e1; } td.fails, td.error { background: #fbe1e1; }
td.known-deviation { background: #fff4d6; } td.skipped { background: #eee; }
td small { color: #555; } img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0 16px; }
"""


def page(doc: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    esc = html.escape
    impls = [i for i in doc["implementations"] if any(i in row for row in doc["matrix"].values())]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>optspec conformance report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>optspec conformance report</h1>",
        f"<p>optspec {esc(doc['optspec'])}, generated {esc(doc['generated'])}; "
        + esc(", ".join(f"{k} {v}" for k, v in doc["environment"]["packages"].items() if v))
        + "</p>",
        "<h2>Matrix</h2>",
        '<table id="matrix"><thead><tr><th>rule</th>' + "".join(f"<th>{esc(i)}</th>" for i in impls) + "</tr></thead><tbody>",
    ]
    for rule in sorted(doc["matrix"]):
        row = doc["matrix"][rule]
        cells = []
        for impl in impls:
            if impl not in row:
                cells.append('<td class="none">-</td>')
                continue
            cell = row[impl]
            css = cell["status"].replace(" ", "-")
            cells.append(f'<td class="{esc(css)}"><b>{esc(cell["status"])}</b><br><small>{esc(cell["follows"])}</small></td>')
        parts.append(f"<tr><th>{esc(rule)}</th>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    if doc["unavailable"]:
        parts.append("<p>Not run: " + esc("; ".join(f"{k}: {v}" for k, v in doc["unavailable"].items())) + "</p>")
    failures = [r for r in doc["results"] if r["status"] in ("fails", "error")]
    parts.append("<h2>Failures</h2>")
    parts.append(
        "<ul>" + "".join(f"<li><code>{esc(r['id'])}</code>: {esc(r['message'])}</li>" for r in failures) + "</ul>"
        if failures
        else "<p>None.</p>"
    )
    parts.append(
        "<h2>Error versus step</h2><p>Maximum error divided by its budget at each recorded step; "
        "above the dashed line is a failure.</p>"
    )
    for rule, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h3>{esc(rule)}</h3><img class="plot" alt="{esc(rule)}: error / budget per step" '
            f'src="data:image/png;base64,{data}">'
        )
    # Records each plot's decoded width once loaded, so a headless browser's DOM shows it rendered.
    parts.append(
        "<script>window.addEventListener('load', () => document.querySelectorAll('img.plot')"
        ".forEach(i => { i.dataset.renderedWidth = i.naturalWidth; }));</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(data: ReportData, directory: Path) -> list[Path]:
    """Write report.json, report.md, report.html and plots/<rule>.png (each atomically)."""
    doc = document(data)
    images: dict[str, bytes] = {}
    for rule in sorted({r.rule for r in data.results}):
        rule_results = [r for r in data.results if r.rule == rule]
        if any(r.errors for r in rule_results):
            images[rule] = plot_rule(rule, data.implementations, rule_results)
    written = []
    plots: dict[str, str] = {}
    for rule, png in images.items():
        path = directory / "plots" / f"{rule}.png"
        _write_bytes_atomic(path, png)
        plots[rule] = f"plots/{rule}.png"
        written.append(path)
    for name, text in (
        ("report.json", json.dumps(doc, separators=(",", ":")) + "\n"),
        ("report.md", markdown(doc, plots)),
        ("report.html", page(doc, images)),
    ):
        write_atomic(directory / name, text)
        written.append(directory / name)
    return written


# --------------------------------------------------------------------------- recorded runs side by side


@dataclass(frozen=True)
class RecordedRun:
    """One ``optspec run --json`` document: where it came from, its environment and its results."""

    path: Path
    optspec: str
    environment: Mapping[str, Any]
    results: tuple[Mapping[str, Any], ...]

    def version(self, framework: str) -> str:
        """The recorded version of ``framework`` (``torch``, ``optax``, ``optspec``), without a local label."""
        if framework == "optspec":
            return self.optspec
        version = self.environment.get("packages", {}).get(framework)
        return str(version).split("+", 1)[0] if version else "not installed"


def load_run(path: Path) -> RecordedRun:
    """Read a run document; anything else is one line naming the file (UsageError, exit 2)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not JSON ({exc})") from None
    if isinstance(doc, list):
        raise UsageError(f"{path}: a result list without library versions (an older optspec run --json); run it again")
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
        raise UsageError(f"{path}: not an `optspec run --json` document (format {RUN_FORMAT!r})")
    environment, results = doc.get("environment"), doc.get("results")
    if not isinstance(environment, dict) or not isinstance(environment.get("packages"), dict):
        raise UsageError(f"{path}: field 'environment.packages' is missing or not an object")
    if not isinstance(results, list):
        raise UsageError(f"{path}: field 'results' is missing or not a list")
    for index, record in enumerate(results):
        missing = [k for k in ("implementation", "status", "message") if not isinstance(record, dict) or k not in record]
        if missing or not (record.get("rule") or record.get("schedule")):
            what = missing[0] if missing else "rule"
            raise UsageError(f"{path}: results[{index}]: field {what!r} is missing")
        if record["status"] not in ("conforms", "deviation", "fails", "error", "skipped"):
            raise UsageError(f"{path}: results[{index}]: unknown status {record['status']!r}")
    return RecordedRun(path, str(doc.get("optspec", "?")), environment, tuple(results))


def framework_of(implementation: str) -> str:
    """The distribution an implementation's version is that of: ``torch.fused`` -> torch, ``optax`` -> optax."""
    return implementation.split(".", 1)[0]


def comparison_document(runs: Sequence[RecordedRun]) -> dict[str, Any]:
    """Rows (rules, then schedules) x columns (implementation x each run's version of its library).

    A column is ``IMPL @ LIBRARY VERSION`` (``torch.fused @ torch 2.0.1``), the runs of one
    implementation side by side; two runs with the same version are told apart by file name.
    """
    columns: dict[tuple[str, int], str] = {}
    order: list[str] = []
    for run in runs:
        for record in run.results:
            if record["implementation"] not in order:
                order.append(record["implementation"])
    labels: list[str] = []
    for impl in order:
        for index, run in enumerate(runs):
            if not any(r["implementation"] == impl for r in run.results):
                continue
            label = f"{impl} @ {framework_of(impl)} {run.version(framework_of(impl))}"
            if label in labels:
                label = f"{label} ({run.path.name})"
            columns[impl, index] = label
            labels.append(label)
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for index, run in enumerate(runs):
        for record in run.results:
            row = record.get("rule") or f"schedule {record['schedule']}"
            cell = cells.setdefault(row, {}).setdefault(
                columns[record["implementation"], index], {"counts": {}, "deviations": set(), "skips": []}
            )
            cell["counts"][record["status"]] = cell["counts"].get(record["status"], 0) + 1
            cell["deviations"].update(record.get("deviations", []))
            if record["status"] == "skipped":
                cell["skips"].append(record["message"])
    matrix_cells: dict[str, dict[str, Any]] = {}
    for row, by_label in cells.items():
        matrix_cells[row] = {}
        for label, cell in by_label.items():
            status = next(
                (name for key, name in _FOLD if cell["counts"].get(key)),
                "skipped",
            )
            shown = (missing_in(cell["skips"]) or status) if status == "skipped" else status
            matrix_cells[row][label] = {
                "status": status,
                "shown": shown,
                "counts": cell["counts"],
                "deviations": sorted(cell["deviations"]),
            }
    return {
        "format": "optspec-comparison/1",
        "optspec": __version__,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [
            {
                "path": str(run.path),
                "optspec": run.optspec,
                "python": run.environment.get("python"),
                "packages": dict(run.environment.get("packages", {})),
            }
            for run in runs
        ],
        "columns": labels,
        "matrix": matrix_cells,
        "failures": [
            {"column": columns[r["implementation"], index], "id": r.get("id", ""), "status": r["status"], "message": r["message"]}
            for index, run in enumerate(runs)
            for r in run.results
            if r["status"] in ("fails", "error")
        ],
    }


#: a cell's status: the worst outcome of its checks (error > fails > known deviation > conforms > skipped)
_FOLD = (("error", "error"), ("fails", "fails"), ("deviation", "known deviation"), ("conforms", "conforms"))


def _versions_line(run: Mapping[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in run["packages"].items() if v)
    return f"`{run['path']}`: Python {run['python']}, {packages}"


def comparison_markdown(doc: Mapping[str, Any]) -> str:
    columns = doc["columns"]
    lines = [
        "# optspec conformance across library versions",
        "",
        f"optspec {doc['optspec']}, generated {doc['generated']}, from {len(doc['runs'])} recorded runs:",
        "",
        *[f"- {_versions_line(run)}" for run in doc["runs"]],
        "",
        "Each cell: status over every golden test and dtype of that run; `-`: the run has no such cell.",
        "",
        "| rule | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in sorted(doc["matrix"]):
        cells = doc["matrix"][row]
        lines.append(f"| {row} | " + " | ".join(cells[c]["shown"] if c in cells else "-" for c in columns) + " |")
    lines += ["", "## Failures", ""]
    lines += [f"- {f['column']}: `{f['id']}`: {f['message']}" for f in doc["failures"]] or ["None."]
    return "\n".join(lines) + "\n"


def comparison_page(doc: Mapping[str, Any]) -> str:
    esc = html.escape
    columns = doc["columns"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>optspec conformance across library versions</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>optspec conformance across library versions</h1>",
        "<ul>" + "".join(f"<li>{esc(_versions_line(run))}</li>" for run in doc["runs"]) + "</ul>",
        '<table id="matrix"><thead><tr><th>rule</th>' + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead><tbody>",
    ]
    for row in sorted(doc["matrix"]):
        cells = doc["matrix"][row]
        tds = [
            f'<td class="{esc(cells[c]["status"].replace(" ", "-"))}">{esc(cells[c]["shown"])}</td>'
            if c in cells
            else '<td class="none">-</td>'
            for c in columns
        ]
        parts.append(f"<tr><th>{esc(row)}</th>{''.join(tds)}</tr>")
    parts.append("</tbody></table><h2>Failures</h2>")
    failures = doc["failures"]
    parts.append(
        "<ul>"
        + "".join(f"<li>{esc(f['column'])}: <code>{esc(f['id'])}</code>: {esc(f['message'])}</li>" for f in failures)
        + "</ul>"
        if failures
        else "<p>None.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_comparison(runs: Sequence[RecordedRun], directory: Path) -> list[Path]:
    """Write comparison.json, comparison.md and comparison.html (each atomically)."""
    doc = comparison_document(runs)
    written = []
    for name, text in (
        ("comparison.json", json.dumps(doc, indent=1) + "\n"),
        ("comparison.md", comparison_markdown(doc)),
        ("comparison.html", comparison_page(doc)),
    ):
        write_atomic(directory / name, text)
        written.append(directory / name)
    return written
