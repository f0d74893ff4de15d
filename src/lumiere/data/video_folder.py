"""Captioned videos from a folder or a manifest, as fixed-size training clips.

Sources:
- a directory: every ``*.mp4`` / ``*.webm`` / ``*.gif`` / ``*.mov`` / ``*.mkv`` / ``*.avi`` under it
  (recursively) that has a caption in a ``.txt`` of the same name beside it;
- a ``.csv`` manifest with columns ``video`` and ``caption``, or a ``.jsonl`` manifest with the same
  keys per line; video paths are relative to the manifest's folder unless absolute.

Each item: decode with PyAV, resample to ``fps`` by timestamp, take ``num_frames`` consecutive
resampled frames at a random start, resize the shorter side (antialiased) and centre-crop to
``resolution``. The start is drawn from numpy ``default_rng([seed, epoch, index])``, so an item is
deterministic given the seed and the epoch (``set_epoch``), whatever the worker or access order.

A file that cannot be decoded or is too short is found lazily: the first time it is read, it is
marked bad, one warning names it, and the next good item (index + 1, + 2, ...) is returned instead.
With DataLoader workers each worker process keeps its own bad-file set, so a file may be warned
about once per worker.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lumiere.data.video_io import parse_resolution, read_video_timed

logger = logging.getLogger(__name__)

FOLDER_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")


class ClipTooShortError(ValueError):
    """The video has fewer frames than one clip needs at the configured fps."""


def _read_manifest(manifest: Path) -> list[tuple[Path, str]]:
    """(video path, caption) pairs from a .csv (header: video,caption) or .jsonl manifest."""
    base = manifest.parent
    rows: list[dict[str, Any]]
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"video", "caption"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{manifest}: a CSV manifest needs columns 'video' and 'caption', got {reader.fieldnames}"
                )
            rows = list(reader)
    elif manifest.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "video" not in row or "caption" not in row:
                raise ValueError(f"{manifest}:{number}: each JSONL line needs keys 'video' and 'caption'")
            rows.append(row)
    else:
        raise ValueError(f"manifest must end in .csv or .jsonl, got {str(manifest)!r}")
    return [(base / str(row["video"]), str(row["caption"])) for row in rows]


def _scan_folder(root: Path) -> list[tuple[Path, str]]:
    """(video path, caption) for every video under root with a .txt caption beside it, sorted."""
    entries, missing = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in FOLDER_EXTENSIONS and p.is_file()):
        caption_path = path.with_suffix(".txt")
        if caption_path.is_file():
            entries.append((path, caption_path.read_text(encoding="utf-8").strip()))
        else:
            missing.append(path.name)
    if missing:
        logger.warning(
            "%s: skipping %d video(s) without a .txt caption beside them: %s%s",
            root,
            len(missing),
            ", ".join(missing[:5]),
            ", ..." if len(missing) > 5 else "",
        )
    return entries


def resample_indices(times: Sequence[float], fps: float, end: float) -> np.ndarray:
    """For target times 0, 1/fps, 2/fps, ... below ``end``, the index of the frame shown then.

    times: presentation times (s) of the decoded frames, ascending, first 0. The frame shown at
    time T is the last one with time <= T (a small tolerance absorbs rounding of timestamps).
    """
    count = int(math.floor(end * fps + 1e-6))
    targets = np.arange(count) / fps
    return np.searchsorted(np.asarray(times), targets + 1e-6, side="right") - 1


def resize_and_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[c, f, h0, w0] float -> [c, f, height, width]: scale so both sides cover, then centre-crop."""
    _, _, h0, w0 = video.shape
    scale = max(height / h0, width / w0)
    new_h, new_w = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    frames = video.permute(1, 0, 2, 3)  # [c, f, h, w] -> [f, c, h, w] (frames as a batch)
    if (new_h, new_w) != (h0, w0):
        frames = F.interpolate(
            frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    frames = frames[:, :, top : top + height, left : left + width]
    return frames.permute(1, 0, 2, 3).contiguous()  # [f, c, h, w] -> [c, f, h, w]


class VideoFolder(Dataset):
    """Captioned videos as clips; item: {"video": float32 [3, f, h, w] in [-1, 1], "caption": str}."""

    def __init__(
        self,
        root: str | Path,  # a directory (captions in .txt beside each video) or a .csv / .jsonl manifest
        num_frames: int = 16,  # frames per clip
        resolution: int | Sequence[int] = 32,  # int or (h, w) of the output clips
        fps: float | None = 8.0,  # resample to this frame rate by timestamp; None keeps every frame
        seed: int = 0,  # temporal crops come from default_rng([seed, epoch, index])
        random_crop: bool = True,  # False: always start at the first frame
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        self.root = Path(root)
        if self.root.is_dir():
            self.entries = _scan_folder(self.root)
        elif self.root.is_file():
            self.entries = _read_manifest(self.root)
        else:
            raise FileNotFoundError(
                f"root must be a directory or a .csv/.jsonl manifest, {str(root)!r} does not exist"
            )
        if not self.entries:
            raise ValueError(f"no captioned videos found in {str(root)!r}")
        self.num_frames = int(num_frames)
        self.height, self.width = parse_resolution(resolution)
        self.fps = None if fps is None else float(fps)
        self.seed = int(seed)
        self.random_crop = random_crop
        self.epoch = 0
        self.bad: set[int] = set()  # indices found unreadable or too short (warned once each)
        self._times: dict[int, list[float]] = {}  # frame timestamps of items already decoded

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Change the temporal crops (call at the start of each epoch)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> torch.Tensor:
        """Decode item ``index`` -> float32 [3, f, h, w] in [-1, 1]; raises if unreadable or too short."""
        path = self.entries[index][0]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        times = self._times.get(index)
        frames = None
        if times is None:  # first visit: decode everything once to learn the timestamps
            frames, times = read_video_timed(path)
            self._times[index] = times
        if self.fps is None:
            picks = np.arange(len(times))
        else:
            # The last frame lasts one frame interval (the median gap), so a clip of n frames at
            # its own rate spans n / rate seconds.
            gap = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / self.fps
            picks = resample_indices(times, self.fps, times[-1] + gap)
        if len(picks) < self.num_frames:
            raise ClipTooShortError(
                f"{len(picks)} frames at {self.fps or 'native'} fps, fewer than num_frames={self.num_frames}"
            )
        start = int(rng.integers(len(picks) - self.num_frames + 1)) if self.random_crop else 0
        picks = picks[start : start + self.num_frames]
        if frames is None:  # later visits: decode only up to the last frame needed
            frames, _ = read_video_timed(path, until=times[picks[-1]])
        if len(frames) <= picks[-1]:
            raise ValueError(f"decoded {len(frames)} frames, expected at least {picks[-1] + 1}")
        clip = np.stack([frames[i] for i in picks])  # [f, h, w, 3] uint8
        video = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1  # -> [3, f, h, w] in [-1, 1]
        return resize_and_crop(video, self.height, self.width).clamp(-1, 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.entries)
        if not -n <= index < n:
            raise IndexError(f"index must be in [-{n}, {n - 1}], got {index}")
        index %= n
        for candidate in (index + k for k in range(n)):
            candidate %= n
            if candidate in self.bad:
                continue
            try:
                video = self.load(candidate)
            except (av.FFmpegError, OSError, ValueError, EOFError) as error:
                self.bad.add(candidate)
                logger.warning("skipping %s: %s", self.entries[candidate][0], error)
                continue
            return {"video": video, "caption": self.entries[candidate][1]}
        raise RuntimeError(
            f"none of the {n} videos under {str(self.root)!r} is readable with at least "
            f"num_frames={self.num_frames} frames at fps={self.fps}"
        )
