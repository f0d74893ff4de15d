"""Process settings for running lumiere on CPU: keep freed memory instead of handing it back.

PyTorch on CPU allocates every activation with ``malloc`` and frees it a layer later. glibc's malloc
serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh ``mmap`` and
unmaps them on ``free``, so every page of the next such block faults and is zeroed by the kernel on
first touch. A video U-Net's activations are that size at every layer: on 2 cores, four 80-frame
clips spent two thirds of their CPU time in the kernel (10 M page faults in three sampling steps,
3.5x slower), a 16-frame clip and a training step 1.4x (``bench/bench_allocator.py``,
docs/speed.md). Serving every block from the heap and never trimming it keeps the pages mapped,
so they are reused: the process holds its peak memory until it exits, 1-25% above glibc's peak in
those runs, the price of not paying for the faults again. ``jemalloc``/``tcmalloc`` (``LD_PRELOAD``)
reach the same end; this needs nothing installed.

The ``lumiere`` command calls ``keep_freed_memory()`` first; a program that embeds lumiere calls
it itself if it wants the same. ``LUMIERE_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

ENV_SWITCH = "LUMIERE_KEEP_FREED_MEMORY"

# mallopt parameters, glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # the parameter is an int: the top of the heap is kept up to 2 GiB free


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from the heap (no ``mmap`` per block) and keep the
    heap's freed top, so memory freed by one layer is reused by the next without page faults.

    Returns whether it applied: False off Linux/glibc (macOS, musl), or when ``LUMIERE_KEEP_FREED_MEMORY``
    is ``0``. Blocks allocated before the call are unaffected; calling it twice is harmless."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no such symbol)
    except (OSError, AttributeError):
        return False
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    logger.debug("keep freed memory (glibc mallopt): %s", applied)
    return applied
