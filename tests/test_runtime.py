"""lumiere.runtime: freed memory is kept and reused, so a freed activation costs no page faults."""

import os
import subprocess
import sys

import pytest

from lumiere.runtime import ENV_SWITCH, keep_freed_memory

# A fresh process: allocate, touch and free a 64 MiB tensor a few times, then count the minor page
# faults of the next one. glibc's default maps each block above 32 MiB afresh (16,384 faults of
# 4 KiB pages every time); kept, the freed block's pages are reused.
FAULTS = """
import resource, sys, torch
from lumiere.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(3):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
        env={**{k: v for k, v in os.environ.items() if k != ENV_SWITCH}, **env},
    )  # fmt: skip
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = _faults("keep")
    if not applied:
        pytest.skip("not glibc")
    _, default = _faults("default")
    assert default > 8_000, default  # the default maps the block afresh
    assert kept < 1_000, kept  # kept: the freed block's pages are still mapped
    assert _faults("keep", **{ENV_SWITCH: "0"})[0] is False  # the switch turns it off


def test_switch_off_applies_nothing(monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert keep_freed_memory() is False
