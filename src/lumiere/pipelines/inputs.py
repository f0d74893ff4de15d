"""Image, video and mask inputs of the conditional pipeline (Sec. 4), in every form users hand over.

Accepted forms:
    image  PIL image, numpy ``[h, w, 3]`` / ``[h, w, 4]`` / ``[h, w]`` (float in [0, 1] or uint8),
           torch tensor of the same layout, or an image file path. RGBA drops its alpha channel
           and grayscale is repeated to RGB (both documented conversions, no warning).
    video  numpy or torch ``[f, h, w, 3]`` (float in [0, 1] or uint8), a list of PIL images, or a
           video file path (decoded with PyAV).
    mask   numpy / torch ``[h, w]`` (the same region in every frame) or ``[f, h, w]``, a PIL image
           an image file path or a ``.npy`` file; float, bool or uint8 (uint8 is divided by 255). Values are
           thresholded at 0.5: above is 1. 1 marks the region to generate (inpainting) or animate
           (cinemagraph).

An image or video of another size than the one generated is resized (bilinear, antialiased) with
a warning; a mask is never resized: a mask of the wrong shape is a ``ValueError`` naming both.
Outputs are tensors in the library layout: images ``[3, h, w]`` and videos ``[3, f, h, w]`` in
[-1, 1], masks ``[f, h, w]`` float in {0, 1}.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from lumiere.data.video_io import read_video

logger = logging.getLogger(__name__)

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
VideoInput = np.ndarray | torch.Tensor | Sequence[PIL.Image.Image] | str | os.PathLike
MaskInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
MASK_THRESHOLD = 0.5  # a non-binary mask is 1 where it is above this


def _to_float_array(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """uint8 -> /255; float kept (must lie in [0, 1]); anything else is a ``ValueError``."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"{name} must hold values in [0, 1] (float) or 0..255 (uint8)")
    return array


def _to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """``[..., h, w]``, ``[..., h, w, 1|3|4]`` -> ``[..., h, w, 3]``: gray repeated, alpha dropped."""
    if array.shape[-1] in (3, 4) and array.ndim >= 3:
        return array[..., :3]
    if array.shape[-1] == 1 and array.ndim >= 3:
        return np.repeat(array, 3, axis=-1)
    return np.repeat(array[..., None], 3, axis=-1)


def _read_image_file(path: Path, mode: str, name: str) -> PIL.Image.Image:
    """Decode an image file into PIL ``mode``; a missing or undecodable file names ``name``."""
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no image file at {str(path)!r}")
    try:
        with PIL.Image.open(path) as opened:
            return opened.convert(mode)
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"{name}: {str(path)!r} is not a readable image ({error})") from error


def _resize_frames(frames: torch.Tensor, height: int, width: int, name: str) -> torch.Tensor:
    """``[n, 3, h, w]`` -> ``[n, 3, height, width]``, warning when the size changes."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    warnings.warn(
        f"{name} is {frames.shape[-2]}x{frames.shape[-1]} (h x w); resized to {height}x{width}",
        UserWarning,
        stacklevel=3,
    )
    return F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def load_image(image: ImageInput, height: int, width: int, name: str = "image") -> torch.Tensor:
    """An image in any accepted form -> ``[3, height, width]`` float32 in [-1, 1]."""
    if isinstance(image, (str, os.PathLike)):
        image = _read_image_file(Path(image), "RGB", name)
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a PIL image, a numpy array / torch tensor [h, w, 3] or a file path, "
            f"got {type(image).__name__}"
        )
    if (
        image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4))
        or min(image.shape[:2]) < 1
    ):
        raise ValueError(
            f"{name} must be [h, w], [h, w, 1], [h, w, 3] or [h, w, 4], got shape {tuple(image.shape)}"
        )
    pixels = _to_rgb(_to_float_array(image, name), name)  # [h, w, 3] in [0, 1]
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]  # [1, 3, h, w]
    return _resize_frames(tensor, height, width, name)[0] * 2 - 1


def load_video(video: VideoInput, height: int, width: int, name: str = "video") -> torch.Tensor:
    """A video in any accepted form -> ``[3, f, height, width]`` float32 in [-1, 1]."""
    if isinstance(video, (str, os.PathLike)):
        try:
            video, _ = read_video(video)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{name}: {error}") from error
        except Exception as error:  # PyAV's decoding errors: a broken or non-video file
            raise ValueError(f"{name}: {str(video)!r} is not a readable video ({error})") from error
    if isinstance(video, (list, tuple)):
        if not video or not all(isinstance(frame, PIL.Image.Image) for frame in video):
            raise ValueError(f"{name} given as a list must be a non-empty list of PIL images")
        sizes = {frame.size for frame in video}
        if len(sizes) > 1:
            raise ValueError(f"{name}: the PIL frames differ in size: {sorted(sizes)}")
        video = np.stack([np.asarray(frame.convert("RGB")) for frame in video])
    if not isinstance(video, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a numpy array / torch tensor [f, h, w, 3], a list of PIL images or a file "
            f"path, got {type(video).__name__}"
        )
    if video.ndim != 4 or video.shape[-1] not in (1, 3, 4) or min(video.shape[:3]) < 1:
        raise ValueError(f"{name} must be [f, h, w, 3] (frames of RGB), got shape {tuple(video.shape)}")
    frames = _to_rgb(_to_float_array(video, name), name)  # [f, h, w, 3] in [0, 1]
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [f, 3, h, w]
    tensor = _resize_frames(tensor, height, width, name)
    return tensor.permute(1, 0, 2, 3).contiguous() * 2 - 1  # [3, f, h, w]


def load_mask(mask: MaskInput, num_frames: int, height: int, width: int, name: str = "mask") -> torch.Tensor:
    """A mask in any accepted form -> ``[num_frames, height, width]`` float32 in {0, 1}.

    ``[h, w]`` masks apply to every frame. Values above ``MASK_THRESHOLD`` become 1 (documented
    thresholding of soft masks); the shape must fit exactly (``ValueError`` naming both shapes).
    """
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if path.suffix.lower() == ".npy" and path.is_file():
            try:
                mask = np.load(path, allow_pickle=False)
            except ValueError as error:
                raise ValueError(f"{name}: {str(path)!r} is not a numeric .npy array ({error})") from error
        else:
            mask = _read_image_file(path, "L", name)
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L"))
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a numpy array / torch tensor [h, w] or [f, h, w], a PIL image or a file path, "
            f"got {type(mask).__name__}"
        )
    values = _to_float_array(mask, name)
    if values.ndim == 2:
        values = np.broadcast_to(values, (num_frames, *values.shape))
    if values.shape != (num_frames, height, width):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}, which does not fit the clip: expected ({height}, {width}) "
            f"or ({num_frames}, {height}, {width}) [f, h, w]"
        )
    return torch.from_numpy(np.ascontiguousarray(values > MASK_THRESHOLD)).float()
