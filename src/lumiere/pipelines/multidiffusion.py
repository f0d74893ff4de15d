"""MultiDiffusion along time: denoise a clip of any length one temporal window at a time.

Lumiere's SSR model (Bar-Tal et al. 2024, Sec. 3.2) runs on short overlapping temporal windows.
At every denoising step each window ``J_i = F_i(J)`` is predicted on its own, ``Phi(J_i)``, and
the predictions are reconciled by the least-squares problem of MultiDiffusion (Bar-Tal et al.
2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation", Eq. 3-5):

    argmin_J  sum_i || F_i(J) - Phi(J_i) ||^2

whose closed-form solution, for crops with unit weights, is the per-frame average of the window
predictions that cover the frame. The scheduler then takes one ordinary step on the combined
prediction, so any diffusers scheduler works unchanged.

Memory: windows run ``chunk_size`` at a time and their predictions are summed into one
accumulator the size of the output, so the network's activations are those of ``chunk_size``
windows whatever the clip length.

Axis legend:
    b  clips      c  channels      f  frames      h, w  height, width      k  windows in a chunk
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

from lumiere.errors import InvalidArgument

# ``model_fn(chunk, windows) -> prediction``: ``chunk`` is ``[k*b, c, w, h, w]``, the ``k`` windows
# of ``windows`` concatenated along the batch (window-major: window 0's b clips first); the model
# returns ``[k*b, c_out, w, h, w]`` in the same order. ``windows`` lets the model cut per-frame
# conditioning (e.g. the SSR's low-res clip) to the same frames.
WindowModelFn = Callable[[torch.Tensor, Sequence[slice]], torch.Tensor]

DEFAULT_OVERLAP = 2  # frames shared by neighbouring windows (the paper's SSR setting, Sec. 3.2)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_window(window: int, overlap: int, names: tuple[str, str] = ("window", "overlap")) -> None:
    """Raise ``InvalidArgument`` unless ``window >= 1`` and ``0 <= overlap <= window - 1``.

    ``names``: the caller's arguments (e.g. ``("ssr_window", "ssr_overlap")``), named in the error.
    """
    window_name, overlap_name = names
    if not _is_int(window) or window < 1:
        raise InvalidArgument(window_name, "must be an integer >= 1 (frames per temporal window)", window)
    if not _is_int(overlap) or not 0 <= overlap < window:
        # {window_name} is a placeholder: each front end names the window its own way (InvalidArgument)
        raise InvalidArgument(
            overlap_name, f"must be an integer >= 0 and < {{{window_name}}} ({window})", overlap
        )


def temporal_windows(num_frames: int, window: int, overlap: int) -> list[slice]:
    """Overlapping temporal windows that cover frames ``0 .. num_frames - 1``.

    Windows are ``window`` frames long and start every ``window - overlap`` frames; the last window
    is shifted back to end at the last frame, so every frame is covered and every window has the
    same length (the last overlap can then be larger than ``overlap``). ``ValueError`` when
    ``num_frames < 1``, ``window`` is not in ``[1, num_frames]`` (a window longer than the clip has
    no frames to fill it) or ``overlap`` is not in ``[0, window - 1]``.
    """
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r}: must be an integer >= 1")
    check_window(window, overlap)
    if window > num_frames:
        raise ValueError(
            f"window={window} is longer than the clip (num_frames={num_frames}); "
            f"use a window in [1, {num_frames}]"
        )
    stride = window - overlap
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)  # the last window ends at the last frame
    return [slice(start, start + window) for start in starts]


def window_coverage(num_frames: int, windows: Sequence[slice]) -> torch.Tensor:
    """``[f]`` float32: how many windows cover each frame (the denominator of Eq. 5)."""
    count = torch.zeros(num_frames, dtype=torch.float32)
    for window in windows:
        count[window] += 1
    return count


def _check_windows(num_frames: int, windows: Sequence[slice]) -> None:
    if not windows:
        raise ValueError("windows is empty; give at least one window (see temporal_windows)")
    lengths = set()
    for window in windows:
        start, stop, step = window.indices(num_frames)
        if step != 1 or stop <= start:
            raise ValueError(
                f"window {window} is not a non-empty range of consecutive frames of a {num_frames}-frame clip"
            )
        lengths.add(stop - start)
    if len(lengths) != 1:
        raise ValueError(
            f"windows must all have the same length to run in batches, got lengths {sorted(lengths)}"
        )
    if bool((window_coverage(num_frames, windows) == 0).any()):
        raise ValueError(f"windows {list(windows)} leave frames of the {num_frames}-frame clip uncovered")


def multidiffusion_predict(
    model_fn: WindowModelFn,
    sample: torch.Tensor,
    windows: Sequence[slice],
    chunk_size: int = 1,
) -> torch.Tensor:
    """Per-frame average of ``model_fn``'s predictions on the temporal ``windows`` of ``sample``.

    ``sample [b, c, f, h, w]`` -> ``[b, c_out, f, h, w]`` float32: the closed-form solution of
    argmin_J sum_i ||F_i(J) - Phi(J_i)||^2 (MultiDiffusion, Bar-Tal et al. 2023, Eq. 5). Windows
    run ``chunk_size`` at a time, concatenated along the batch; memory beyond the output
    accumulator is that of one chunk. With one window covering the clip the result is
    ``model_fn(sample)`` bit for bit.
    """
    if sample.ndim != 5:
        raise ValueError(f"sample must be [b, c, f, h, w] (5-D), got shape {tuple(sample.shape)}")
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: must be an integer >= 1 (windows per network call)")
    batch, num_frames = sample.shape[0], sample.shape[2]
    _check_windows(num_frames, windows)

    total: torch.Tensor | None = None  # [b, c_out, f, h, w] sum of the predictions covering each frame
    for first in range(0, len(windows), chunk_size):
        chunk_windows = windows[first : first + chunk_size]
        chunk = torch.cat([sample[:, :, window] for window in chunk_windows])  # [k*b, c, w, h, w]
        prediction = model_fn(chunk, chunk_windows)
        expected = (len(chunk_windows) * batch, chunk.shape[2])
        if prediction.ndim != 5 or (prediction.shape[0], prediction.shape[2]) != expected:
            raise ValueError(
                f"model_fn returned shape {tuple(prediction.shape)} for a chunk of shape {tuple(chunk.shape)}; "
                "it must keep the batch and frame axes ([k*b, c_out, w, h, w])"
            )
        if total is None:
            total = sample.new_zeros(
                (batch, prediction.shape[1], num_frames, *prediction.shape[3:]), dtype=torch.float32
            )
        for index, window in enumerate(chunk_windows):
            total[:, :, window] += prediction[index * batch : (index + 1) * batch].float()
        del chunk, prediction
    count = window_coverage(num_frames, windows).to(total.device)  # [f]
    return total.div_(count[:, None, None])  # [b, c_out, f, h, w] / [f, 1, 1]
