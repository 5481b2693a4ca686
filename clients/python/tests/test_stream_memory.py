"""encrypt_stream/decrypt_stream run in constant memory: a 512 MiB stream peaks no higher than
a 16 MiB one. Each size runs in its own process (peak RSS is per process and never goes down)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).parent / "programs" / "stream_pipe.py"
MiB = 1024 * 1024


def run(server, key_id: str, size: int) -> dict:
    done = subprocess.run(
        [sys.executable, str(PROGRAM), server.target, key_id, str(size)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_stream(server, orders):
    small = run(server, orders, 16 * MiB)
    large = run(server, orders, 512 * MiB)
    for result, size in ((small, 16 * MiB), (large, 512 * MiB)):
        assert result["bytes"] == size
        assert result["output_sha256"] == result["input_sha256"]
    growth_kib = large["maxrss_kib"] - small["maxrss_kib"]
    assert growth_kib < 4 * 1024, f"peak RSS grew by {growth_kib} KiB from 16 MiB to 512 MiB"
