"""Sampling-speed switches that trade quality for time (issue 34; figures in ``docs/speed.md``).

- ``cache_interval`` (DeepCache, Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for
  Free", Sec. 3): a full network call every ``cache_interval`` denoising steps; in between only the
  first, full-resolution level runs, on the deep features kept from the last full call
  (``lumiere.models.stunet.DeepFeatureCache``). 1 (the default): every call is a full call.
- ``guidance_end`` (as diffusers' ``control_guidance_end``): classifier-free guidance (Ho &
  Salimans 2022) on the first ``guidance_end`` fraction of the steps; the later steps, which
  refine detail once the layout is fixed, run the conditional branch alone: half the batch.
  1.0 (the default): guidance on every step.

Both leave the output unchanged at their defaults; anything else is an approximation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from lumiere.errors import InvalidArgument
from lumiere.models.stunet import DeepFeatureCache


class DeepCaches:
    """DeepCache state of one denoising run: one ``DeepFeatureCache`` per stream of network calls.

    A stream is a chunk of MultiDiffusion windows with or without the unconditional branch: its
    calls see the same frames and batch, so the features one full call keeps fit the next calls.
    ``reuse`` is set by the sampling loop before each step (False: full calls, which refill).
    """

    def __init__(self, interval: int):
        self.interval = check_cache_interval(interval)
        self.reuse = False
        self._caches: dict[tuple, DeepFeatureCache] = {}

    def cache(self, windows: Sequence[slice], guided: bool) -> DeepFeatureCache:
        """The cache of the call on ``windows`` (with the unconditional branch when ``guided``),
        set to reuse its features on a reusing step once a full call has filled it."""
        key = (tuple((window.start, window.stop) for window in windows), guided)
        cache = self._caches.setdefault(key, DeepFeatureCache())
        cache.reuse = self.reuse and cache.features is not None
        return cache


def check_cache_interval(value: int, name: str = "cache_interval") -> int:
    """``value`` if it is an integer >= 1, else ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgument(
            name, "must be an integer >= 1 (a full network call every N steps; 1: no caching)", value
        )
    return int(value)


def check_guidance_end(value: float, name: str = "guidance_end") -> float:
    """``value`` if it is a number in [0, 1], else ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise InvalidArgument(
            name,
            "must be a number in [0, 1] (the fraction of the steps, the first ones, with guidance)",
            value,
        )
    return float(value)


def guided_step_count(num_steps: int, guidance_end: float) -> int:
    """How many of ``num_steps`` steps, the first ones, run with guidance: ``ceil(guidance_end * n)``."""
    return math.ceil(check_guidance_end(guidance_end) * num_steps)
