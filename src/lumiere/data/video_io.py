"""Video files <-> frame arrays, and conversions between the library's tensors and frames.

Two layouts meet here:
- frames: numpy ``[f, h, w, 3]``, float in [0, 1] or uint8 (what files, grids and viewers use);
- video tensors: torch ``[3, f, h, w]`` (or batched ``[b, 3, f, h, w]``), float in [-1, 1] (what the
  models use).

Formats by extension: ``.mp4`` (H.264, yuv420p, via PyAV), ``.webm`` (VP9, yuv420p, via PyAV),
``.gif`` (via imageio / Pillow, 256-colour palette per frame). mp4 and webm are lossy; yuv420p
halves the colour resolution, so compare round trips with a tolerance.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from lumiere.files import atomic_write

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif")
# Encoder settings: near-transparent quality for small synthetic clips.
_CODECS = {
    ".mp4": ("libx264", {"crf": "15", "preset": "medium"}),
    ".webm": ("libvpx-vp9", {"crf": "15", "b": "0", "deadline": "good", "cpu-used": "4"}),
}


# ------------------------------------------------------------------------------------------------
# Conversions
# ------------------------------------------------------------------------------------------------


def parse_resolution(resolution: int | Sequence[int], min_side: int = 1) -> tuple[int, int]:
    """int or (h, w) -> (h, w), with a ValueError for anything else or sides below ``min_side`` pixels."""
    is_int = isinstance(resolution, numbers.Integral)
    size = (
        (resolution, resolution) if is_int else tuple(resolution) if isinstance(resolution, Sequence) else ()
    )
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and s >= min_side for s in size):
        raise ValueError(
            f"resolution must be an int or (h, w) with both sides >= {min_side}, got {resolution!r}"
        )
    return int(size[0]), int(size[1])


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{name} must be [f, h, w, 3] with f >= 1, got shape {frames.shape}")
    return frames


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames float in [0, 1] (clipped) or uint8 -> uint8, same shape."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be float in [0, 1] or uint8, got dtype {frames.dtype}")
    return (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def to_float(frames: np.ndarray) -> np.ndarray:
    """Frames uint8 or float -> float32 in [0, 1], same shape."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255
    return np.clip(frames.astype(np.float32), 0.0, 1.0)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """Tensor [3, f, h, w] (or [b, 3, f, h, w]) in [-1, 1] -> float32 numpy [f, h, w, 3] ([b, f, h, w, 3]) in [0, 1]."""
    if video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(f"video must be [3, f, h, w] or [b, 3, f, h, w], got shape {tuple(video.shape)}")
    frames = ((video.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return frames.movedim(-4, -1).numpy()  # [..., 3, f, h, w] -> [..., f, h, w, 3]


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """Numpy [f, h, w, 3] (float [0, 1] or uint8) -> float32 tensor [3, f, h, w] in [-1, 1]."""
    frames = _check_frames(frames)
    video = torch.from_numpy(to_float(frames)).permute(3, 0, 1, 2)  # [f, h, w, 3] -> [3, f, h, w]
    return (video * 2 - 1).contiguous()


def make_grid(videos: np.ndarray, nrow: int = 4, padding: int = 2, pad_value: float = 0.0) -> np.ndarray:
    """Tile clips [n, f, h, w, 3] into one clip [f, H, W, 3], ``nrow`` clips per row, same dtype.

    H = rows * (h + padding) + padding with rows = ceil(n / nrow); W likewise with min(n, nrow).
    ``pad_value`` is in [0, 1] (scaled to 255 for uint8).
    """
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[0] < 1:
        raise ValueError(f"videos must be [n, f, h, w, 3] with n >= 1, got shape {videos.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, f, h, w, _ = videos.shape
    cols, rows = min(n, nrow), -(-n // nrow)
    fill = pad_value * 255 if videos.dtype == np.uint8 else pad_value
    grid = np.full(
        (f, rows * (h + padding) + padding, cols * (w + padding) + padding, 3), fill, dtype=videos.dtype
    )
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = videos[i]
    return grid


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise ValueError(f"path must end in one of {VIDEO_EXTENSIONS}, got {str(path)!r}")
    return ext


def write_video(path: str | Path, video: np.ndarray | torch.Tensor, fps: float = 8.0) -> Path:
    """Write frames [f, h, w, 3] (float in [0, 1] or uint8) to .mp4, .webm or .gif (by extension).

    H.264 in yuv420p needs even sizes: for .mp4 an odd height or width is padded by repeating the
    last row or column (logged as a warning), so the file is one pixel larger than the frames.
    VP9 (.webm) and GIF keep odd sizes. The file appears complete or not at all (written beside
    ``path`` and renamed); an ``OutputError`` names ``path`` when it cannot be written.
    Returns the path.
    """
    path = Path(path)
    ext = _extension(path)
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    frames = to_uint8(_check_frames(video, "video"))
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    # Encoded into a temporary file beside ``path``, renamed into place once complete: a full
    # disk or a kill never leaves a truncated (or 0-byte) clip at ``path`` (lumiere.files).
    with atomic_write(path) as temporary:
        _encode(temporary, ext, frames, fps, name=path)
    return path


def _encode(path: Path, ext: str, frames: np.ndarray, fps: float, name: Path) -> None:
    """Encode uint8 frames ``[f, h, w, 3]`` into ``path`` in the format of ``ext`` (``name``: the
    output the log names)."""
    if ext == ".gif":
        import imageio.v3 as iio

        # GIF delays are whole centiseconds; loop=0 repeats forever.
        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        return

    f, h, w, _ = frames.shape
    if ext == ".mp4" and (h % 2 or w % 2):
        logger.warning("%s: %dx%d is odd; padded to %dx%d for yuv420p", name, h, w, h + h % 2, w + w % 2)
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    codec, options = _CODECS[ext]
    with av.open(str(path), mode="w", format=ext.lstrip(".")) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = dict(options)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder


def _undecodable(path: Path, error: Exception) -> ValueError:
    """The error for a file FFmpeg cannot read; PyAV's own message may name only the codec call."""
    return ValueError(
        f"{str(path)!r} could not be decoded: the file is corrupted, truncated or not a video ({error})"
    )


@contextmanager
def _video_stream(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The container and first video stream of ``path``; ``FileNotFoundError`` for a missing file,
    ``ValueError`` naming the file for one FFmpeg cannot read (also when decoding in the block)."""
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {str(path)!r}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video stream")
            yield container, container.streams.video[0]
    except (av.error.FFmpegError, EOFError) as error:
        raise _undecodable(path, error) from error


def probe_video(path: str | Path) -> tuple[int, int, int]:
    """(frames, height, width) of a video file from its headers and packets, decoding nothing:
    what decoding it would hold in memory, known before it is decoded. Errors as ``read_video``."""
    with _video_stream(Path(path)) as (container, stream):
        height, width = stream.codec_context.height, stream.codec_context.width
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    return int(frames), int(height), int(width)


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file -> (uint8 [f, h, w, 3], fps).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one that
    is corrupted, truncated, not a video, or has no video frames.
    """
    path = Path(path)
    with _video_stream(path) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{str(path)!r} has no decodable video frames")
    return np.stack(frames), float(rate) if rate else 0.0


def read_video_timed(path: str | Path, until: float | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Decode frames with their presentation times in seconds (from the first frame's).

    Stops after the first frame at or past ``until`` seconds, if given. Frames are uint8 [h, w, 3].
    Errors as ``read_video``.
    """
    path = Path(path)
    frames: list[np.ndarray] = []
    times: list[float] = []
    with _video_stream(path) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate
        step = 1.0 / float(rate) if rate else None
        for frame in container.decode(stream):
            if frame.time is not None:
                time = float(frame.time)
            elif step is not None:
                time = times[-1] + step if times else 0.0
            else:
                raise ValueError(f"{str(path)!r}: frames carry no timestamps and the stream no frame rate")
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(time)
            if until is not None and time - times[0] >= until:
                break
    if not frames:
        raise ValueError(f"{str(path)!r} has no decodable video frames")
    start = times[0]
    return frames, [t - start for t in times]
