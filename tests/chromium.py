"""Headless Chromium for the tests of generated pages: load a page and return the DOM after its scripts ran.

Used by the matrix report's test (tests/test_report.py) and the check page's
(tests/test_check_html.py). Debian's ``chromium`` package provides ``/usr/bin/chromium``;
without it the calling test skips with that instruction.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


def dump_dom(page: Path, timeout: float = 120) -> str:
    """The DOM of ``page`` (a local HTML file) rendered by headless Chromium, after 5 s of virtual time."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to run this test")
    profile = tempfile.mkdtemp(prefix="optspec-chromium-")
    try:
        completed = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert completed.returncode == 0, f"chromium exited with {completed.returncode}: {completed.stderr[-2000:]}"
    return completed.stdout
