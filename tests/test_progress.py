"""Progress on stderr: a tqdm bar on a terminal, plain lines otherwise, nothing with --quiet.

The terminal case runs the command under a pseudo-terminal (stdout and stderr both the pty),
as a person at a terminal would; the others capture stdout and stderr through pipes.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from optspec.progress import Progress, progress_mode

REPO = Path(__file__).resolve().parents[1]
#: A small selection: sgd on torch's for-loop path, 50 checks, in this process (no workers).
RUN = ["run", "--rule", "sgd", "--impl", "torch.for-loop", "--jobs", "1"]


def optspec(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optspec.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )


def under_a_terminal(*argv: str) -> tuple[int, str]:
    """Run ``optspec ARGV`` with stdout and stderr on a pseudo-terminal: (exit code, everything it showed)."""
    leader, follower = pty.openpty()
    # a terminal 100 columns wide, as a person's would be (a fresh pty is 0 x 0)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "optspec.cli", *argv], cwd=REPO, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    shown = bytearray()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            shown.extend(chunk)
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=60), shown.decode(errors="replace")


def test_lines_mode_writes_one_line_per_update_with_done_total_and_elapsed() -> None:
    stream = io.StringIO()
    with Progress("optspec run", 10, "checks", stream=stream) as progress:
        assert progress.mode == "lines", "a StringIO is not a terminal: plain lines expected"
        progress.update("adam x optax", 4)
        progress.update("adam x torch.for-loop", 6)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, f"one line per update expected, got {lines!r}"
    assert re.fullmatch(r"optspec run: adam x optax: 4/10 checks, \d+\.\d s", lines[0]), lines[0]
    assert lines[1].startswith("optspec run: adam x torch.for-loop: 10/10 checks, "), lines[1]


def test_quiet_writes_nothing_and_the_mode_follows_the_streams() -> None:
    stream = io.StringIO()
    with Progress("optspec run", 3, "checks", quiet=True, stream=stream) as progress:
        progress.update("adam x optax", 3)
    assert stream.getvalue() == "", f"--quiet must print no progress, printed {stream.getvalue()!r}"
    assert progress_mode(False, io.StringIO(), io.StringIO()) == "lines"
    assert progress_mode(True, io.StringIO(), io.StringIO()) == "off"


def test_run_not_on_a_terminal_prints_plain_progress_lines_on_stderr_only(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = optspec(*RUN, "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert any(re.fullmatch(r"optspec run: sgd x torch\.for-loop: (\d+)/\1 checks, \d+\.\d s", line) for line in lines), (
        f"no plain progress line naming rule, implementation, done/total and elapsed on stderr: {result.stderr[-2000:]!r}"
    )
    assert "\r" not in result.stderr and "\x1b" not in result.stderr, "a bar's control characters in a non-terminal stderr"
    assert "optspec run:" not in result.stdout, f"progress leaked into stdout: {result.stdout[-2000:]!r}"
    total = int(re.search(r"(\d+)/\1 checks", result.stderr).group(1))
    assert len(json.loads(out.read_text())["results"]) == total, f"the --json file should hold the {total} checks"


def test_run_quiet_prints_no_progress(tmp_path: Path) -> None:
    result = optspec(*RUN, "--quiet")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr == "", f"--quiet printed on stderr: {result.stderr[-2000:]!r}"
    assert "50 conform" in result.stdout or " conform," in result.stdout, result.stdout[-2000:]


def test_run_on_a_terminal_draws_a_tqdm_bar() -> None:
    code, shown = under_a_terminal(*RUN)
    assert code == 0, shown[-3000:]
    # tqdm redraws its line with carriage returns and ends with the full count and the last label
    assert "\r" in shown and "optspec run" in shown, f"no progress bar drawn: {shown[-3000:]!r}"
    assert re.search(r"(\d+)/\1", shown) and "sgd x torch.for-loop" in shown, (
        f"the bar lacks done/total or the label: {shown[-3000:]!r}"
    )
    assert not re.search(r"^optspec run: sgd x torch\.for-loop: \d+/\d+ checks", shown, re.M), "plain lines on a terminal"


def test_run_quiet_on_a_terminal_draws_nothing() -> None:
    code, shown = under_a_terminal(*RUN, "--quiet")
    assert code == 0, shown[-3000:]
    assert "optspec run" not in shown and "checks," not in shown, f"--quiet drew progress on a terminal: {shown[-3000:]!r}"


@pytest.mark.parametrize("quiet", [False, True])
def test_golden_progress_lines_or_nothing(tmp_path: Path, quiet: bool) -> None:
    argv = ["golden", "adadelta", "--dir", str(tmp_path)] + (["--quiet"] if quiet else [])
    result = optspec(*argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "adadelta.json").is_file(), "optspec golden wrote no file"
    progress = [line for line in result.stderr.splitlines() if line.startswith("optspec golden: adadelta: ")]
    if quiet:
        assert result.stderr == "", f"--quiet printed on stderr: {result.stderr[-2000:]!r}"
    else:
        assert progress and progress[-1].startswith("optspec golden: adadelta: 6/6 tests, "), result.stderr[-2000:]
    assert "optspec golden:" not in result.stdout, "progress leaked into stdout"
