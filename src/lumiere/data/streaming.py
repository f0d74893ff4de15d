"""Training clips streamed from WebDataset tar shards (``data.kind: shards``; ``lumiere.data.shards``).

Per epoch ``e`` the shards are put in an order seeded by (seed, e) and split over the run's
``world x workers`` readers (global reader ``g = rank * workers + worker``): reader ``g`` takes
shards ``g, g + G, ...`` of that order when there are at least ``G`` shards, else every ``G``-th
clip of every shard. Each reader passes its clips through a shuffle buffer (seeded by
(seed, e, rank, worker)), then decodes them with PyAV: ``num_frames`` frames resampled to ``fps``
by timestamp from a random start drawn from numpy ``default_rng([seed, e, rank, worker, n])``
(``n``: the clip's place in the reader's epoch), resized with the aspect kept and centre-cropped,
either to ``resolution`` or to the closest of the aspect ``buckets``, with the longest of the
``length_buckets`` that the clip holds. A reader forms its batches itself, one bucket each, so a
batch has one shape ``[b, 3, f, h, w]``.

The data position is exact: each batch carries its reader's state (epoch, clips drawn from the
buffer, clips waiting in bucket queues). ``ShardStream`` keeps the latest state of every reader
and how many batches were taken (a DataLoader takes them from its workers in turn), the training
checkpoint stores it, and a resumed stream replays the buffer from the shard headers, decoding
nothing, so it continues with the very next batch: no clip repeats and none is skipped.

Robustness (counted per reason, logged at the end of each reader's epoch; nothing raises on one
file): an undecodable clip ("unreadable"), a clip shorter than the shortest length bucket
("too short", or looped with ``short_clips="loop"``), a clip whose frames end before its
metadata says ("truncated"). Audio is ignored, the frame times make variable frame rates right,
grayscale / 10-bit / yuv444 are converted to RGB by FFmpeg, the display rotation is applied, and
huge frames are downscaled by FFmpeg (area) before conversion, so memory stays bounded.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import tarfile
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lumiere.data.video_folder import resize_and_crop

logger = logging.getLogger(__name__)

SHORT_POLICIES = ("skip", "loop")
INDEXED_SHARDS = 32  # shard indexes (headers + metadata) each reader keeps in memory
# The video member of a sample: any extension other than these.
_META_MEMBERS = ("txt", "json")


def expand_shards(patterns: str | Sequence[str]) -> list[str]:
    """Shard paths from paths, folders (every ``*.tar`` in them), globs and brace patterns
    (``data/shard-{000000..000099}.tar``), in the order given (globs and folders sorted)."""
    from braceexpand import braceexpand

    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[str] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            if Path(item).is_dir():
                paths.extend(sorted(str(p) for p in Path(item).glob("*.tar")))
            elif any(c in item for c in "*?["):
                paths.extend(sorted(glob.glob(item)))
            elif Path(item).is_file():
                paths.append(item)
            else:
                raise FileNotFoundError(f"data.path: no shard at {item!r} (from {str(pattern)!r})")
    if not paths:
        raise ValueError(f"data.path: no .tar shards found in {list(patterns)}")
    return paths


@dataclass
class _Entry:
    """One sample of a shard: where its members lie in the tar, and its metadata."""

    key: str
    members: dict[str, tuple[int, int]]  # extension -> (offset, size) in the tar
    meta: dict[str, Any]


def index_shard(path: str) -> list[_Entry]:
    """The samples of one shard from its tar headers, and their JSON metadata (no video is read)."""
    entries: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = Path(member.name).name.partition(".")
            entries.setdefault(key, {})[ext] = (member.offset_data, member.size)
    out = []
    with open(path, "rb") as handle:
        for key, members in entries.items():
            if "json" not in members or not any(ext not in _META_MEMBERS for ext in members):
                continue  # not a lumiere clip: nothing to train on
            offset, size = members["json"]
            handle.seek(offset)
            out.append(_Entry(key, members, json.loads(handle.read(size))))
    return out


def read_member(path: str, where: tuple[int, int]) -> bytes:
    """The bytes of one tar member at ``where`` = (offset, size), as ``index_shard`` located it."""
    with open(path, "rb") as handle:
        handle.seek(where[0])
        return handle.read(where[1])


def _shuffled(refs: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A shuffle buffer of ``size`` items: each new item replaces a random one, which is yielded."""
    buffer: list[Any] = []
    for ref in refs:
        if len(buffer) < size:
            buffer.append(ref)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = ref
    for j in rng.permutation(len(buffer)):
        yield buffer[int(j)]


class _Skip(Exception):
    """A clip that is skipped, with the reason that is counted."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode_window(
    data: bytes,
    meta: dict[str, Any],
    times: np.ndarray,  # seconds from the first frame, ascending: when each output frame is shown
    size: tuple[int, int],  # (h, w) the frames will be cropped to: decoding downscales toward it
) -> np.ndarray:
    """Decode the frames shown at ``times`` -> uint8 ``[len(times), h', w', 3]`` (display
    orientation; ``h', w'`` cover ``size`` with the aspect kept, at most about twice it)."""
    first, rotation = float(meta.get("first_time", 0.0)), int(meta.get("rotation", 0))
    t_from, t_to = float(times[0]), float(times[-1])
    height, width = int(meta["height"]), int(meta["width"])
    # Frames larger than twice the output are downscaled by FFmpeg (area) before RGB conversion.
    scale = min(1.0, 2 * max(size[0] / height, size[1] / width))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    if rotation in (90, 270):  # decoded frames are in storage orientation
        out_w, out_h = out_h, out_w
    stamps: list[float] = []
    frames: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if t_from > 1.0 and stream.time_base:
            container.seek(int((t_from + first) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            time = float(frame.time) - first
            if time > t_to + 1e-6:
                break
            if stamps and time <= t_from + 1e-6:  # a later frame is shown at t_from: drop the earlier
                stamps.clear()
                frames.clear()
            stamps.append(time)
            frames.append(
                frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA").to_ndarray()
            )
    if not frames:
        raise _Skip("unreadable", "no frame decoded in the window")
    gap = 1.0 / meta["fps"] if meta.get("fps") else 0.5
    if t_to - stamps[-1] > max(2 * gap, 0.5) + 1e-6:  # the decoder stopped before the window's end
        raise _Skip("truncated", f"frames end at {stamps[-1]:.2f} s, the window at {t_to:.2f} s")
    picks = np.clip(np.searchsorted(np.asarray(stamps), times + 1e-6, side="right") - 1, 0, None)
    clip = np.stack([frames[i] for i in picks])  # [f, h', w', 3]
    if rotation:
        clip = np.rot90(clip, k=rotation // 90, axes=(1, 2))  # display = storage turned counter-clockwise
    return np.ascontiguousarray(clip)


class StreamingClips(IterableDataset):
    """Batches ``{"video": float32 [b, 3, f, h, w] in [-1, 1], "caption": [b], "key": [b]}`` from
    tar shards; iterate it through ``ShardStream`` (which adds the data position)."""

    def __init__(
        self,
        shards: str | Sequence[str],  # paths, folders, globs or brace patterns of .tar shards
        batch_size: int,  # clips per batch (per process)
        num_frames: int = 16,  # frames per clip (the length when length_buckets is None)
        resolution: int | Sequence[int] = 32,  # int or (h, w) of every clip when buckets is None
        fps: float = 8.0,  # clips are resampled to this frame rate by timestamp
        seed: int = 0,  # shard order, shuffle buffer and temporal crops
        shuffle_buffer: int = 256,  # clips each reader shuffles among (1: shard order)
        short_clips: str = "skip",  # clips shorter than the shortest length: "skip" or "loop"
        buckets: Sequence[Sequence[int]] | None = None,  # (h, w) sizes: a clip goes to the closest aspect
        length_buckets: Sequence[int] | None = None,  # frame counts: a clip takes the longest it holds
    ) -> None:
        from lumiere.data.video_io import parse_resolution

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not fps > 0:
            raise ValueError(f"data.fps must be > 0 for shards, got {fps}")
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if short_clips not in SHORT_POLICIES:
            raise ValueError(f"data.short_clips must be one of {SHORT_POLICIES}, got {short_clips!r}")
        self.shards = expand_shards(shards)
        self.batch_size, self.fps, self.seed = int(batch_size), float(fps), int(seed)
        self.shuffle_buffer, self.short_clips = int(shuffle_buffer), short_clips
        sizes = buckets if buckets else [parse_resolution(resolution)]
        self.buckets = [parse_resolution(tuple(b), min_side=1) for b in sizes]
        lengths = sorted(int(n) for n in (length_buckets or [num_frames]))
        if lengths[0] < 1:
            raise ValueError(
                f"data.length_buckets must be frame counts >= 1, got {list(length_buckets or [])}"
            )
        self.lengths = lengths
        # Where each reader starts (set by ShardStream): {worker: state}, the first worker of the
        # DataLoader's turn, and the run's split.
        self.rank, self.world, self.workers, self.first_worker = 0, 1, 1, 0
        self.start_states: dict[str, dict[str, Any]] = {}
        self.start_epoch = 0
        self._index: OrderedDict[int, list[_Entry]] = OrderedDict()  # the last INDEXED_SHARDS shards read

    # ---- which clips a reader reads ------------------------------------------------------------

    def entries(self, shard: int) -> list[_Entry]:
        """The samples of shard ``shard`` (an index of ``INDEXED_SHARDS`` shards is kept: a reader's
        memory does not grow with the data set; an evicted shard's headers are read again)."""
        if shard in self._index:
            self._index.move_to_end(shard)
        else:
            self._index[shard] = index_shard(self.shards[shard])
            if len(self._index) > INDEXED_SHARDS:
                self._index.popitem(last=False)
        return self._index[shard]

    def epoch_refs(
        self, epoch: int, rank: int, world: int, worker: int, workers: int
    ) -> Iterator[tuple[int, int]]:
        """(shard, entry) of the clips reader (rank, worker) reads in ``epoch``, before shuffling:
        the readers of a run read disjoint clips that together cover every shard."""
        g, total = rank * workers + worker, world * workers
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        if len(self.shards) >= total:
            for shard in order[g::total]:
                yield from ((int(shard), i) for i in range(len(self.entries(int(shard)))))
            return
        position = 0  # fewer shards than readers: every reader reads every shard, keeps its share
        for shard in order:
            for i in range(len(self.entries(int(shard)))):
                if position % total == g:
                    yield int(shard), i
                position += 1

    # ---- one clip --------------------------------------------------------------------------------

    def _bucket(self, meta: dict[str, Any]) -> tuple[tuple[int, int], int, int]:
        """((h, w), frames, frames the clip holds at ``fps``): closest aspect, longest length held."""
        aspect = math.log(max(meta["width"], 1) / max(meta["height"], 1))
        size = min(self.buckets, key=lambda hw: abs(math.log(hw[1] / hw[0]) - aspect))
        held = int(math.floor((meta["end"] - meta["start"]) * self.fps + 1e-6))
        fitting = [n for n in self.lengths if n <= held]
        if fitting:
            return size, fitting[-1], held
        if self.short_clips == "skip" or held < 1:
            raise _Skip("too short", f"{held} frames at {self.fps} fps, shortest length {self.lengths[0]}")
        return size, self.lengths[0], held

    def load(self, ref: tuple[int, int], rng: np.random.Generator) -> dict[str, Any]:
        """Clip ``ref`` -> {"video": [3, f, h, w] in [-1, 1], "caption", "key", "bucket"}; raises ``_Skip``."""
        shard, i = ref
        entry, path = self.entries(shard)[i], self.shards[shard]
        meta = entry.meta
        (height, width), length, held = self._bucket(meta)
        if held >= length:
            start = int(rng.integers(held - length + 1))
            steps = np.arange(start, start + length)
        else:  # short_clips="loop": the clip again from its start
            steps = np.arange(length) % held
        times = meta["start"] + steps / self.fps
        video_ext = next(ext for ext in entry.members if ext not in _META_MEMBERS)
        try:
            frames = decode_window(read_member(path, entry.members[video_ext]), meta, times, (height, width))
        except _Skip:
            raise
        except (av.FFmpegError, EOFError, OSError, ValueError, MemoryError, IndexError) as error:
            raise _Skip("unreadable", f"{type(error).__name__}: {error}") from error
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [f,h,w,3] -> [3,f,h,w]
        caption = read_member(path, entry.members["txt"]).decode("utf-8") if "txt" in entry.members else ""
        return {
            "video": resize_and_crop(video, height, width).clamp(-1, 1),
            "caption": caption,
            "key": f"{Path(path).name}:{entry.key}",
            "bucket": (height, width, length),
        }

    # ---- one reader's batches ------------------------------------------------------------------

    def reader(
        self, rank: int, world: int, worker: int, workers: int, state: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Batches of reader (rank, worker), each with its ``"data_state"``; from ``state`` on."""
        epoch = int(state["epoch"]) if state else self.start_epoch
        skip = int(state["drawn"]) if state else 0
        queues: dict[tuple[int, int, int], list[tuple[dict[str, Any], list[int]]]] = {}

        def add(tag: list[int]) -> dict[str, Any] | None:
            """Decode clip ``tag`` = [epoch, n, shard, entry] into its bucket queue; a full queue is a batch."""
            rng = np.random.default_rng([self.seed, tag[0], rank, worker, tag[1]])
            item = self.load((tag[2], tag[3]), rng)
            queue = queues.setdefault(item["bucket"], [])
            queue.append((item, tag))
            if len(queue) < self.batch_size:
                return None
            del queues[item["bucket"]]
            return {
                "video": torch.stack([it["video"] for it, _ in queue]),
                "caption": [it["caption"] for it, _ in queue],
                "key": [it["key"] for it, _ in queue],
            }

        for tag in state["pending"] if state else []:  # clips that waited in bucket queues
            try:
                add(list(tag))
            except _Skip:
                pass
        empty_epochs = 0
        while True:
            counts: Counter[str] = Counter()
            used = 0
            rng = np.random.default_rng([self.seed, epoch, rank, worker])
            refs = self.epoch_refs(epoch, rank, world, worker, workers)
            for n, (shard, i) in enumerate(_shuffled(refs, self.shuffle_buffer, rng)):
                if n < skip:
                    continue  # resume: the buffer's draws replayed from the headers, nothing decoded
                try:
                    batch = add([epoch, n, shard, i])
                except _Skip as skipped:
                    counts[skipped.reason] += 1
                    continue
                used += 1
                if batch is not None:
                    pending = [tag for queue in queues.values() for _, tag in queue]
                    batch["data_state"] = {
                        "worker": worker,
                        "epoch": epoch,
                        "drawn": n + 1,
                        "pending": pending,
                        "skipped": dict(counts),  # this epoch's so far, by reason
                    }
                    yield batch
            logger.info(
                "shards epoch %d, rank %d worker %d: %d clips used, skipped %s",
                epoch, rank, worker, used, dict(counts) or "none",
            )  # fmt: skip
            empty_epochs = 0 if used else empty_epochs + 1
            if empty_epochs >= 2:
                raise RuntimeError(
                    f"reader rank {rank} worker {worker} of {world}x{workers} found no usable clip in "
                    f"{len(self.shards)} shard(s) for two epochs (skipped: {dict(counts)}); use fewer "
                    "data.num_workers, more shards, data.short_clips: loop or shorter clips"
                )
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batches from its workers in turn, starting with its worker 0: on a
        # resumed stream that is the reader whose batch comes next (ShardStream.first_worker).
        worker = (loader_worker + self.first_worker) % workers
        state = self.start_states.get(str(worker))
        return self.reader(self.rank, self.world, worker, workers, state)


class ShardStream:
    """The training loop's batches from a ``StreamingClips``, with the position to checkpoint.

    ``position()`` is plain JSON; ``ShardStream(..., position=saved)`` continues right after the
    last batch taken. A position saved under another process or worker count cannot be continued
    exactly: the stream then restarts at the saved epoch (a warning says so).
    """

    def __init__(
        self,
        dataset: StreamingClips,
        rank: int,
        world: int,
        num_workers: int,  # DataLoader worker processes (0: read in this process)
        position: dict[str, Any] | None = None,
    ) -> None:
        self.dataset, self.rank, self.world = dataset, rank, world
        self.workers = max(1, num_workers)
        self.batches, self.states = 0, {}
        self.last_state: dict[str, Any] | None = None
        if position:
            if (position.get("world"), position.get("workers"), position.get("rank")) == (
                world,
                self.workers,
                rank,
            ):
                self.batches, self.states = int(position["batches"]), dict(position["states"])
            else:
                epoch = max((int(s["epoch"]) for s in position.get("states", {}).values()), default=0)
                logger.warning(
                    "the data position was saved with %s process(es) x %s worker(s), this run has %d x %d: "
                    "the shard stream restarts at epoch %d (clips of that epoch may repeat)",
                    position.get("world"), position.get("workers"), world, self.workers, epoch,
                )  # fmt: skip
                dataset.start_epoch = epoch
        dataset.rank, dataset.world, dataset.workers = rank, world, self.workers
        dataset.first_worker = self.batches % self.workers
        dataset.start_states = dict(self.states)
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        self._iterator = iter(loader)

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._iterator)
        state = batch.pop("data_state")
        self.last_state = state  # the state of the reader that formed this batch
        self.states[str(int(state["worker"]))] = {
            "epoch": int(state["epoch"]),
            "drawn": int(state["drawn"]),
            "pending": [[int(v) for v in tag] for tag in state["pending"]],
        }
        self.batches += 1
        return batch

    def position(self) -> dict[str, Any]:
        """Where the stream is: JSON for the training checkpoint (``state.json``)."""
        return {
            "rank": self.rank,
            "world": self.world,
            "workers": self.workers,
            "batches": self.batches,
            "states": {k: dict(v) for k, v in self.states.items()},
        }
