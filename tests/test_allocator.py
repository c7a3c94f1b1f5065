"""The malloc settings every node applies: freed message-sized buffers are reused, not faulted
in again. Each case runs in a fresh interpreter, since the settings are per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

# 32 buffers of 4 MiB (detector frames in flight) allocated, touched and freed, 6 times; the
# page faults of the last 5 rounds are counted (the first one faults the pages in once).
ROUNDS = """
import json, resource, sys
from stream_node.stages.allocator import keep_message_buffers
applied = keep_message_buffers() if sys.argv[1] == "tuned" else None
def round_():
    held = [bytearray(4 << 20) for _ in range(32)]
    del held
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults_per_round": faults / 5}))
"""


def rounds(mode: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                          timeout=60, env=env, check=True)
    return json.loads(done.stdout)


def test_freed_frame_buffers_are_reused_not_faulted_in_again() -> None:
    plain = rounds("plain")
    tuned = rounds("tuned")
    assert tuned["applied"] is True
    pages = 32 * (4 << 20) // 4096
    # glibc's default trims the freed 128 MiB, so every round faults its pages in again
    assert plain["faults_per_round"] > pages / 2, plain
    assert tuned["faults_per_round"] < pages / 20, tuned


def test_a_users_own_malloc_settings_win() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
    assert rounds("tuned", env)["applied"] is False
