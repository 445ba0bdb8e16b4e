"""The suite collects the same test ids every time.

pytest-xdist refuses to run when its workers collect different ids, and they collect
at different moments: an id that holds a timestamp, a random number or a set's order
fails the whole suite now and then. Two collections a few seconds apart must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collected_ids() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONHASHSEED="random"),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_two_collections_seconds_apart_give_identical_ids():
    first = collected_ids()
    time.sleep(2.1)  # gzip headers, timestamps and the like tick in whole seconds
    second = collected_ids()
    assert len(first) > 100
    assert first == second, sorted(set(first) ^ set(second))[:10]
