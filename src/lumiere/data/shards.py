"""Write a folder of captioned videos as WebDataset tar shards (``lumiere data shard SRC --out DIR``).

Sources (``list_sources``):
- a directory: every video file under it (recursively) with a caption in a ``.txt`` of the same
  name beside it;
- a ``.csv`` manifest with columns ``path`` (or ``video``) and ``caption``, optional ``start`` and
  ``end`` in seconds; or a ``.jsonl`` manifest with the same keys per line. Relative paths are
  relative to the manifest's folder.

Each clip becomes one WebDataset sample: ``KEY.<ext>`` the file's bytes as they are (no
re-encoding; ``start``/``end`` are applied when streaming), ``KEY.txt`` the caption and
``KEY.json`` its metadata (``CLIP_FIELDS``: fps, frames, size, duration, rotation, ...), read from
the container's packets and its first decoded frame. A shard closes before the clip that would
take it past ``shard_size_mb`` (one clip larger than that is a shard of its own).

Files that cannot be used are skipped, each with its reason (``SKIP_REASONS``), into the
manifest: ``DIR/manifest.json`` holds the counts, totals, shards and every skipped file.

Resume: a shard is written as ``shard-NNNNNN.tar.tmp``, its record (sources it covers, clips,
bytes, skipped files) as ``.progress/shard-NNNNNN.json``, then the tar is renamed into place. A run
starts after the last shard whose tar and record both exist, so a killed run continues without
writing a finished shard again; the shards of a resumed run are those of an uninterrupted one
(a shard's content is a function of the source list and the size bound).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm.auto import tqdm

from lumiere.files import write_text_atomic

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v", ".mpg", ".mpeg", ".ts")
SHARD_PATTERN = "shard-{:06d}.tar"
PROGRESS_DIR = ".progress"
MANIFEST_NAME = "manifest.json"
# Why a file was skipped: the manifest counts each.
SKIP_REASONS = {
    "missing": "the file named by the manifest does not exist",
    "no caption": "no .txt caption beside the video (folder sources)",
    "empty": "a zero-byte file",
    "unreadable": "FFmpeg cannot open or decode it (corrupt, truncated, not a video)",
    "no video stream": "the container holds no video stream (e.g. audio only)",
    "no frames": "fewer than min_frames frames in [start, end]",
    "too large": "a frame with more than max_pixels pixels",
}
# Metadata of every clip (KEY.json): what the streaming reader plans its decoding with.
CLIP_FIELDS = (
    "source",  # the path as the folder or manifest names it
    "ext",  # the video member's extension (the container format)
    "bytes",  # size of the video file
    "fps",  # mean frame rate over the stream: (frames - 1) / (last - first timestamp)
    "frames",  # video packets (= frames for every codec FFmpeg muxes one frame per packet)
    "width",  # display width (after rotation)
    "height",  # display height (after rotation)
    "duration",  # seconds from the first frame to the end of the last
    "first_time",  # timestamp of the first frame, s (times in the clip count from it)
    "start",  # the manifest's start (s, from the first frame) or 0
    "end",  # the manifest's end (s) or the duration
    "rotation",  # display rotation in degrees counter-clockwise (0, 90, 180, 270)
    "pix_fmt",  # the decoder's pixel format (yuv420p, yuv444p, gray, yuv420p10le, ...)
    "codec",  # the video codec
    "audio",  # the container also holds audio (ignored when training)
    "vfr",  # frame intervals vary by more than 10%: variable frame rate
)


@dataclass
class Source:
    """One video to shard: its path, caption and optional time window (seconds)."""

    path: str
    caption: str | None
    start: float | None = None
    end: float | None = None
    name: str = ""  # how the folder or manifest names it (for the manifest)


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


def _optional_seconds(value: Any, key: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:
        raise ValueError(f"{where}: {key} must be >= 0 seconds, got {value!r}")
    return seconds


def _manifest_rows(manifest: Path) -> list[tuple[str, dict[str, Any]]]:
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return [(f"{manifest}:{number}", row) for number, row in enumerate(reader, start=2)]
    if manifest.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{manifest}:{number}: each JSONL line must be an object")
                rows.append((f"{manifest}:{number}", row))
        return rows
    raise ValueError(f"SRC must be a folder or a .csv / .jsonl manifest, got {str(manifest)!r}")


def list_sources(src: str | os.PathLike) -> list[Source]:
    """The videos of a folder (with ``.txt`` captions) or a CSV/JSONL manifest, in a fixed order
    (a folder: sorted paths; a manifest: its rows). A video without a caption is listed with
    ``caption=None`` (skipped as "no caption")."""
    src = Path(src)
    if src.is_dir():
        videos = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        sources = []
        for path in videos:
            caption = path.with_suffix(".txt")
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else None
            sources.append(Source(str(path), text, name=str(path.relative_to(src))))
        return sources
    if not src.is_file():
        raise FileNotFoundError(
            f"SRC must be a folder of videos or a .csv/.jsonl manifest: {str(src)!r} does not exist"
        )
    sources = []
    for where, row in _manifest_rows(src):
        path = row.get("path", row.get("video"))
        if not path or "caption" not in row:
            raise ValueError(f"{where}: each manifest row needs 'path' (or 'video') and 'caption'")
        start = _optional_seconds(row.get("start"), "start", where)
        end = _optional_seconds(row.get("end"), "end", where)
        if start is not None and end is not None and not end > start:
            raise ValueError(f"{where}: end ({end}) must be after start ({start})")
        full = Path(path) if Path(path).is_absolute() else src.parent / path
        sources.append(Source(str(full), str(row["caption"]), start, end, name=str(path)))
    return sources


# ------------------------------------------------------------------------------------------------
# Probing one file (runs in the worker processes)
# ------------------------------------------------------------------------------------------------


def display_rotation(stream: av.video.stream.VideoStream, frame: av.VideoFrame | None = None) -> int:
    """Degrees (0, 90, 180, 270, counter-clockwise) the frames are turned by for display: the
    frame's display matrix, else the stream's ``rotate`` tag (older muxers)."""
    degrees = float(frame.rotation) if frame is not None and frame.rotation else 0.0
    if not degrees:
        degrees = -float(stream.metadata.get("rotate", 0) or 0)  # the tag is clockwise
    return int(round(degrees / 90)) % 4 * 90


def probe_clip(
    source: Source, min_frames: int = 1, max_pixels: int = 8192 * 8192
) -> tuple[dict | None, str | None, str]:
    """(metadata, None, "") for a usable clip, or (None, reason, detail) with a ``SKIP_REASONS`` key.

    Reads the container's video packets (timestamps, count) and decodes the first frame only.
    """
    path = Path(source.path)
    if not path.is_file():
        return None, "missing", f"no file at {source.path}"
    if source.caption is None:
        return None, "no caption", f"no {path.with_suffix('.txt').name} beside it"
    size = path.stat().st_size
    if size == 0:
        return None, "empty", "0 bytes"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None, "no video stream", f"streams: {[s.type for s in container.streams]}"
            stream = container.streams.video[0]
            audio = bool(container.streams.audio)
            base = stream.time_base or Fraction(1, 90000)
            stamps = sorted(
                float(p.pts * base) for p in container.demux(stream) if p.size and p.pts is not None
            )
            container.seek(0)
            frame = next(container.decode(stream), None)
            if frame is None:
                return None, "unreadable", "no decodable frame"
            rotation = display_rotation(stream, frame)
            pix_fmt, codec = frame.format.name, stream.codec_context.name
            width, height = frame.width, frame.height
    except (av.FFmpegError, EOFError, StopIteration, ValueError) as error:
        return None, "unreadable", str(error)[:200]
    if width * height > max_pixels:
        return None, "too large", f"{width}x{height} > {max_pixels} pixels"
    if not stamps:
        return None, "unreadable", "no video packets with timestamps"
    gaps = np.diff(stamps)
    gap = float(np.median(gaps)) if len(gaps) else 1.0 / 8
    first, duration = stamps[0], stamps[-1] - stamps[0] + gap
    start = source.start or 0.0
    end = min(source.end if source.end is not None else duration, duration)
    frames_in_window = sum(1 for s in stamps if start <= s - first < end)
    if frames_in_window < min_frames:
        return None, "no frames", f"{frames_in_window} frames in [{start}, {end}] s, min_frames={min_frames}"
    if rotation in (90, 270):
        width, height = height, width
    meta = {
        "source": source.name or source.path,
        "ext": path.suffix.lower().lstrip("."),
        "bytes": size,
        "fps": (len(stamps) - 1) / (stamps[-1] - first) if len(stamps) > 1 else 0.0,
        "frames": len(stamps),
        "width": width,
        "height": height,
        "duration": duration,
        "first_time": first,
        "start": start,
        "end": end,
        "rotation": rotation,
        "pix_fmt": pix_fmt,
        "codec": codec,
        "audio": audio,
        "vfr": bool(len(gaps) and (gaps.max() - gaps.min()) > 0.1 * gap),
    }
    return meta, None, ""


def _probe_job(job: tuple[int, Source, int, int]) -> tuple[int, dict | None, str | None, str]:
    index, source, min_frames, max_pixels = job
    try:
        meta, reason, detail = probe_clip(source, min_frames, max_pixels)
    except Exception as error:  # noqa: BLE001 - one odd file must not stop a run over millions
        meta, reason, detail = None, "unreadable", f"{type(error).__name__}: {error}"[:200]
    return index, meta, reason, detail


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


@dataclass
class ShardRecord:
    """What one finished shard holds (its ``.progress`` record and its manifest entry)."""

    name: str
    first: int  # index of the first source it covers
    next: int  # index of the first source after it
    clips: int
    bytes: int
    seconds: float  # clip time, start to end
    skipped: list[dict[str, Any]]  # {"source", "reason", "detail"} of the files in [first, next) not written


def _done_records(out: Path) -> list[ShardRecord]:
    """Finished shards of an earlier run, in order: tar and record both present."""
    records = []
    while True:
        name = SHARD_PATTERN.format(len(records))
        record_path = out / PROGRESS_DIR / (name[: -len(".tar")] + ".json")
        if not ((out / name).is_file() and record_path.is_file()):
            return records
        records.append(ShardRecord(**json.loads(record_path.read_text())))


class _ShardWriter:
    """Fills one shard at a time: temporary tar, then its record, then the rename."""

    def __init__(self, out: Path, index: int, first: int):
        self.out, self.index, self.first = out, index, first
        self.writer = None
        self.clips, self.bytes, self.seconds, self.skipped = 0, 0, 0.0, []

    @property
    def name(self) -> str:
        return SHARD_PATTERN.format(self.index)

    def add(self, key: str, data: bytes, caption: str, meta: dict) -> None:
        import webdataset as wds

        if self.writer is None:
            self.writer = wds.TarWriter(str(self.out / (self.name + ".tmp")))
        self.writer.write({"__key__": key, meta["ext"]: data, "txt": caption, "json": meta})
        self.clips += 1
        self.bytes += len(data)
        self.seconds += meta["end"] - meta["start"]

    def finish(self, next_source: int) -> ShardRecord:
        record = ShardRecord(
            self.name, self.first, next_source, self.clips, self.bytes, self.seconds, self.skipped
        )
        if self.writer is not None:
            self.writer.close()
        else:  # only skipped files since the last shard: an empty tar keeps the record's place
            import tarfile

            tarfile.open(self.out / (self.name + ".tmp"), "w").close()
        write_text_atomic(
            self.out / PROGRESS_DIR / (self.name[: -len(".tar")] + ".json"), json.dumps(asdict(record))
        )
        os.replace(self.out / (self.name + ".tmp"), self.out / self.name)
        return record


def write_shards(
    src: str | os.PathLike,  # a folder of videos with .txt captions, or a .csv / .jsonl manifest
    out: str | os.PathLike,  # the shard folder (created; an earlier run in it is resumed)
    shard_size_mb: float = 256.0,  # a shard closes before the clip that would take it past this
    workers: int = 1,  # processes probing files
    min_frames: int = 1,  # clips with fewer frames in [start, end] are skipped
    max_pixels: int = 8192 * 8192,  # frames larger than this are skipped
    progress: bool = True,
) -> dict[str, Any]:
    """Shard ``src`` into ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    if not shard_size_mb > 0:
        raise ValueError(f"shard_size_mb must be > 0, got {shard_size_mb}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sources = list_sources(src)
    out = Path(out)
    (out / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    records = _done_records(out)
    begin = records[-1].next if records else 0
    if begin:
        logger.info(
            "%s: resuming after %d finished shard(s), at file %d of %d",
            out,
            len(records),
            begin,
            len(sources),
        )
    limit = shard_size_mb * 2**20
    shard = _ShardWriter(out, len(records), begin)
    jobs = [(i, sources[i], min_frames, max_pixels) for i in range(begin, len(sources))]
    # Probing is parallel and ordered (imap): the shards depend on the source order only.
    # Forked where the platform can: a spawned worker re-imports lumiere (torch, diffusers), tens
    # of seconds each on a busy machine; the probes use PyAV only, which is safe to fork.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = context.Pool(workers) if workers > 1 and len(jobs) > 1 else None
    results = pool.imap(_probe_job, jobs, chunksize=4) if pool else map(_probe_job, jobs)
    try:
        for index, meta, reason, detail in tqdm(results, total=len(jobs), disable=not progress, desc="shard"):
            source = sources[index]
            if meta is None:
                shard.skipped.append(
                    {"source": source.name or source.path, "reason": reason, "detail": detail}
                )
                continue
            if shard.clips and shard.bytes + meta["bytes"] > limit:
                records.append(shard.finish(index))
                shard = _ShardWriter(out, len(records), index)
            shard.add(f"{index:09d}", Path(source.path).read_bytes(), source.caption, meta)
        if shard.clips or shard.skipped or not records:
            records.append(shard.finish(len(sources)))
    finally:
        if pool is not None:
            pool.terminate()
    manifest = _manifest(records, len(sources), shard_size_mb)
    write_text_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=2))
    logger.info(
        "%s: %d clips in %d shards (%.1f MB, %.0f s of video); %d file(s) skipped %s",
        out, manifest["clips"], len(manifest["shards"]), manifest["bytes"] / 2**20, manifest["seconds"],
        manifest["skipped"], manifest["skipped_by_reason"],
    )  # fmt: skip
    return manifest


def _manifest(records: list[ShardRecord], files: int, shard_size_mb: float) -> dict[str, Any]:
    skipped = [entry for record in records for entry in record.skipped]
    return {
        "files": files,
        "clips": sum(r.clips for r in records),
        "bytes": sum(r.bytes for r in records),
        "seconds": sum(r.seconds for r in records),
        "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(e["reason"] for e in skipped).items())),
        "shard_size_mb": shard_size_mb,
        "shards": [{"name": r.name, "clips": r.clips, "bytes": r.bytes} for r in records],
        "skipped_files": skipped,
    }
