"""Make the README's results table from asv result files (never typed by hand).

For one machine and its latest commit with results, and for every rule and implementation,
the row uses the largest parameter set (by element count) with a float32 ``time_step``
result and shows:

* time per step — asv's ``Step.time_step`` (median);
* GB/s — the spec's minimum bytes of that step (``optspec.traffic``) over that time: the
  useful bandwidth, for reading only (asv gates on times and bytes);
* roofline — ``Roofline.track_ratio``: measured time over (minimum bytes / measured copy
  bandwidth); 1.0 is the physical limit, lower is better;
* state — ``Step.track_state_bytes`` in MB (10^6 bytes).

Usage::

    python asv_bench/tools/readme_table.py --machine cpu-amd-epyc-2vcpu-1thread --update asv_bench/README.md

``--update`` replaces the text between ``<!-- results-table:start -->`` and
``<!-- results-table:end -->``; without it the table is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
TIME, RATIO, STATE = (
    "optimizer_step.Step.time_step",
    "optimizer_step.Roofline.track_ratio",
    "optimizer_step.Step.track_state_bytes",
)


def load_results(results_dir: Path, machine: str) -> dict:
    """The result file of the machine's most recent run (by its ``date``)."""
    files = [f for f in (results_dir / machine).glob("*.json") if f.name != "machine.json"]
    if not files:
        raise SystemExit(f"no results for machine {machine!r} under {results_dir}")
    return max((json.loads(f.read_text()) for f in files), key=lambda d: d.get("date", 0))


def values(data: dict, name: str) -> dict[tuple[str, ...], float]:
    """Parameter combination (unquoted) -> value, for the combinations that have one."""
    if name not in data["results"]:
        return {}
    columns = data["result_columns"]
    row = dict(zip(columns, data["results"][name]))
    combos = itertools.product(*row["params"])
    out = {}
    for combo, value in zip(combos, row["result"]):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[tuple(p.strip("'") for p in combo)] = float(value)
    return out


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def table(results_dir: Path, machine: str) -> str:
    sys.path.insert(0, str(HERE))
    from benchmarks.optimizer_step import param_set_numel, prepare

    data = load_results(results_dir, machine)
    times, ratios, states = values(data, TIME), values(data, RATIO), values(data, STATE)
    best: dict[tuple[str, str], tuple[int, str]] = {}
    for rule, impl, param_set, dtype in times:
        if dtype != "float32":
            continue
        size = param_set_numel(param_set)
        if (rule, impl) not in best or (size, param_set) > best[(rule, impl)]:
            best[(rule, impl)] = (size, param_set)
    lines = [
        f"Machine `{machine}`, commit `{data['commit_hash'][:8]}`, float32, each row at the largest "
        "parameter set measured there.",
        "",
        "| rule | implementation | parameter set | time / step | GB/s | roofline (1.0 = limit) | state MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (rule, impl), (size, param_set) in sorted(best.items()):
        key = (rule, impl, param_set, "float32")
        seconds = times[key]
        prepared = prepare(rule, param_set, "float32")
        min_bytes = prepared.min_bytes(prepared.variant)
        ratio = f"{ratios[key]:.2f}" if key in ratios else "—"
        state = f"{states[key] / 1e6:.1f}" if key in states else "—"
        lines.append(
            f"| {rule} | {impl} | {param_set} ({size:,}) | {fmt_time(seconds)} | {min_bytes / seconds / 1e9:.1f} "
            f"| {ratio} | {state} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", required=True)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--update", type=Path, help="a Markdown file with the table markers")
    args = parser.parse_args()
    text = table(args.results, args.machine)
    if args.update is None:
        print(text)
        return
    readme = args.update.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        raise SystemExit(f"{args.update}: missing {START} / {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    args.update.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
