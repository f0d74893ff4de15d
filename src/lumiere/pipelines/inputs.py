"""Image, video and mask inputs (Sec. 4), in every form users hand over: one module for the
pipeline, the CLI and the web page.

Accepted forms:
    image  PIL image, numpy ``[h, w, 3]`` / ``[h, w, 4]`` / ``[h, w]`` (float in [0, 1] or uint8),
           torch tensor of the same layout, or an image file path. An array's alpha channel is
           dropped and grayscale is repeated to RGB; a PIL image or file with transparency is
           shown over white, as an image viewer shows it.
    video  numpy or torch ``[f, h, w, 3]`` (float in [0, 1] or uint8), a list of PIL images, or a
           video file path (decoded with PyAV).
    mask   numpy / torch ``[h, w]`` (the same region in every frame) or ``[f, h, w]``, a PIL image,
           an image file path or a ``.npy`` file; float, bool or uint8 (uint8 is divided by 255).
           1 marks the region to generate (inpainting) or animate (cinemagraph).

Sizes follow diffusers' image and mask processors. An image or video of another size than the one
generated is resized (bilinear, antialiased): stretched with a warning (``crop=False``, the
pipeline's default), or centre-cropped to the aspect ratio first (``crop=True``, the web page). A
mask either has the generated size or the size of the image / video it was drawn on; the latter
is resized with it (nearest) and binarised at 0.5. A mask of any other shape is a ``ValueError``
naming the shapes.

Outputs are tensors in the library layout: images ``[3, h, w]`` and videos ``[3, f, h, w]`` in
[-1, 1], masks ``[f, h, w]`` float in {0, 1}. ``decode_image`` / ``decode_video`` give the pixels
at their own size, ``[n, 3, h, w]`` in [0, 1], for callers that resize later (``fit_frames``).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
VideoInput = np.ndarray | torch.Tensor | Sequence[PIL.Image.Image] | str | os.PathLike
MaskInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
MASK_THRESHOLD = 0.5  # a non-binary mask is 1 where it is above this


class UnreadableInputError(ValueError):
    """A file that is not a readable image or video; ``reason`` is the decoder's word for it."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# Images and video frames of more pixels are refused from the file's header, before decoding:
# Pillow's own warning threshold (~89 M pixels, 268 MB as RGB); a generated frame is far smaller.
MAX_INPUT_PIXELS = PIL.Image.MAX_IMAGE_PIXELS or 89_478_485


class OversizedInputError(ValueError):
    """An image or video frame of more pixels than ``max_pixels`` (read from the file's header).
    ``width`` / ``height`` are None where only the pixel count is known (Pillow's own refusal)."""

    def __init__(
        self, name: str, width: int | None, height: int | None, max_pixels: int, pixels: int | None = None
    ):
        size = f"{width}x{height} pixels" if width is not None else f"{pixels:,} pixels"
        super().__init__(f"{name} is {size}; at most {max_pixels:,} are taken")
        self.width, self.height, self.max_pixels = width, height, max_pixels
        self.pixels = pixels if width is None or height is None else width * height


# ---------------------------------------------------------------------------------------------
# Pixels at their own size: [n, 3, h, w] float32 in [0, 1]
# ---------------------------------------------------------------------------------------------


def _to_float_array(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """uint8 -> /255; bool -> 0/1; float kept (must lie in [0, 1]); else a ``ValueError``."""
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


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """``[..., h, w]``, ``[..., h, w, 1|3|4]`` -> ``[..., h, w, 3]``: gray repeated, alpha dropped."""
    if array.shape[-1] in (3, 4) and array.ndim >= 3:
        return array[..., :3]
    if array.shape[-1] == 1 and array.ndim >= 3:
        return np.repeat(array, 3, axis=-1)
    return np.repeat(array[..., None], 3, axis=-1)


def _frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """``[n, h, w, 3]`` float in [0, 1] -> ``[n, 3, h, w]`` float32."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def open_image(
    image: ImageInput, name: str = "image", mode: str = "RGB", max_pixels: int | None = MAX_INPUT_PIXELS
) -> PIL.Image.Image:
    """A PIL image in ``mode`` ("RGB", "L" or "RGBA") from a path, a PIL image or an array.

    A file's size is read from its header first: more than ``max_pixels`` (default
    ``MAX_INPUT_PIXELS``; None: no limit) is an ``OversizedInputError`` before any pixel is decoded. In "RGB", transparent pixels become white.
    ``FileNotFoundError`` for a missing file, ``UnreadableInputError`` for one that is no image.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no image file at {str(path)!r}")
        try:
            with warnings.catch_warnings():  # the size is checked below, before decoding
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                opened = PIL.Image.open(path)
            with opened:
                _check_pixels(name, opened.width, opened.height, max_pixels)
                opened.load()
                image = opened.copy()
        except PIL.Image.DecompressionBombError as error:  # over twice Pillow's limit: refused in open
            pixels = re.search(r"\((\d+) pixels\)", str(error))
            count = int(pixels.group(1)) if pixels else 2 * MAX_INPUT_PIXELS + 1
            raise OversizedInputError(name, None, None, max_pixels or MAX_INPUT_PIXELS, count) from error
        except (OSError, SyntaxError) as error:
            reason = "unknown image format" if isinstance(error, PIL.UnidentifiedImageError) else str(error)
            raise UnreadableInputError(
                f"{name}: {str(path)!r} is not a readable image ({error})", reason
            ) from error
    elif isinstance(image, (np.ndarray, torch.Tensor)):  # gray, RGB or RGBA as given (alpha kept)
        pixels = _to_float_array(_check_image_shape(image, name), name)
        pixels = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
        image = PIL.Image.fromarray((pixels * 255 + 0.5).astype(np.uint8))
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(
            f"{name} must be an image, a numpy array / torch tensor or a file path, got {type(image).__name__}"
        )
    _check_pixels(name, image.width, image.height, max_pixels)
    if mode == "RGB" and image.mode in ("RGBA", "LA", "P"):
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert(mode)


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise OversizedInputError(name, width, height, max_pixels)


def decode_image(
    image: ImageInput, name: str = "image", max_pixels: int | None = MAX_INPUT_PIXELS
) -> torch.Tensor:
    """An image in any accepted form -> ``[1, 3, h, w]`` float32 in [0, 1], at its own size."""
    if isinstance(image, (str, os.PathLike, PIL.Image.Image)):
        image = np.asarray(open_image(image, name, "RGB", max_pixels))
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a PIL image, a numpy array / torch tensor [h, w, 3] or a file path, "
            f"got {type(image).__name__}"
        )
    return _frames_tensor(_to_rgb(_to_float_array(_check_image_shape(image, name), name))[None])


def _check_image_shape(image: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """``image`` if it is ``[h, w]`` or ``[h, w, 1 | 3 | 4]``, else a ``ValueError``."""
    channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))
    if not channels_ok or min(image.shape[:2]) < 1:
        raise ValueError(
            f"{name} must be [h, w], [h, w, 1], [h, w, 3] or [h, w, 4], got shape {tuple(image.shape)}"
        )
    return image


def read_video_file(
    path: str | os.PathLike,
    name: str = "video",
    max_frames: int | None = None,
    max_pixels: int | None = MAX_INPUT_PIXELS,
) -> np.ndarray:
    """The first ``max_frames`` (default all) frames of a video file -> uint8 ``[f, h, w, 3]``.

    Decodes no more than it returns; a frame size over ``max_pixels`` (from the stream header) is
    an ``OversizedInputError``. ``FileNotFoundError`` for a missing file, ``UnreadableInputError``
    for one that is no video, is broken, or has no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no video file at {str(path)!r}")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableInputError(f"{name}: {str(path)!r} has no video stream", "no video stream")
            stream = container.streams.video[0]
            _check_pixels(name, stream.codec_context.width or 0, stream.codec_context.height or 0, max_pixels)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == max_frames:
                    break
    except (av.error.FFmpegError, OSError, EOFError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise UnreadableInputError(
            f"{name}: {str(path)!r} is not a readable video ({error})", reason
        ) from error
    if not frames:
        raise UnreadableInputError(f"{name}: {str(path)!r} has no decodable video frames", "no frames")
    return np.stack(frames)


def decode_video(
    video: VideoInput,
    name: str = "video",
    max_frames: int | None = None,
    max_pixels: int | None = MAX_INPUT_PIXELS,
) -> torch.Tensor:
    """A video in any accepted form -> ``[f, 3, h, w]`` float32 in [0, 1], at its own size (at
    most ``max_frames`` frames: the first ones)."""
    if isinstance(video, (str, os.PathLike)):
        video = read_video_file(video, name, max_frames, max_pixels)
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
    return _frames_tensor(_to_rgb(_to_float_array(video[:max_frames], name)))


# ---------------------------------------------------------------------------------------------
# Resizing to the generated size
# ---------------------------------------------------------------------------------------------


def crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred box of the target's aspect ratio in a width x height image."""
    if width * target_height > height * target_width:  # too wide: crop the sides
        new_width = max(1, round(height * target_width / target_height))
        left = (width - new_width) // 2
        return left, 0, left + new_width, height
    new_height = max(1, round(width * target_height / target_width))
    top = (height - new_height) // 2
    return 0, top, width, top + new_height


def fit_frames(
    frames: torch.Tensor, height: int, width: int, name: str, crop: bool = False, mask: bool = False
) -> torch.Tensor:
    """``[n, c, h, w]`` -> ``[n, c, height, width]``: stretched (``crop=False``) or centre-cropped
    to the aspect ratio, then resized (``crop=True``). Images bilinear and antialiased, with a
    warning when stretched; masks (``mask=True``) nearest, so they stay binary, and silently (they
    follow their image, which warned)."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    if crop:
        left, top, right, bottom = crop_box(frames.shape[-1], frames.shape[-2], width, height)
        frames = frames[..., top:bottom, left:right]
    elif not mask:
        warnings.warn(
            f"{name} is {frames.shape[-2]}x{frames.shape[-1]} (h x w); resized to {height}x{width}",
            UserWarning,
            stacklevel=3,
        )
    if mask:
        return F.interpolate(frames, size=(height, width), mode="nearest-exact")
    return F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def load_image(
    image: ImageInput, height: int, width: int, name: str = "image", crop: bool = False
) -> torch.Tensor:
    """An image in any accepted form -> ``[3, height, width]`` float32 in [-1, 1]."""
    return fit_frames(decode_image(image, name), height, width, name, crop)[0] * 2 - 1


def load_video(
    video: VideoInput, height: int, width: int, name: str = "video", crop: bool = False
) -> torch.Tensor:
    """A video in any accepted form -> ``[3, f, height, width]`` float32 in [-1, 1]."""
    tensor = fit_frames(decode_video(video, name), height, width, name, crop)  # [f, 3, h, w]
    return tensor.permute(1, 0, 2, 3).contiguous() * 2 - 1


def load_mask(
    mask: MaskInput,
    num_frames: int,
    height: int,
    width: int,
    name: str = "mask",
    given_size: tuple[int, int] | None = None,  # (h, w) of the image / video the mask was drawn on
    crop: bool = False,  # resized as the image / video was: centre-cropped first (see fit_frames)
) -> torch.Tensor:
    """A mask in any accepted form -> ``[num_frames, height, width]`` float32 in {0, 1}.

    ``[h, w]`` masks apply to every frame. A mask of ``given_size`` is resized with its image or
    video (nearest); values above ``MASK_THRESHOLD`` become 1 (diffusers' mask processor
    convention). Any other size is a ``ValueError`` naming the shapes.
    """
    if isinstance(mask, (str, os.PathLike)) and Path(mask).suffix.lower() == ".npy" and Path(mask).is_file():
        try:
            mask = np.load(mask, allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{name}: {str(mask)!r} is not a numeric .npy array ({error})") from error
    if isinstance(mask, (str, os.PathLike, PIL.Image.Image)):
        mask = np.asarray(open_image(mask, name, "L"))
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a numpy array / torch tensor [h, w] or [f, h, w], a PIL image or a file path, "
            f"got {type(mask).__name__}"
        )
    values = torch.from_numpy(_to_float_array(mask, name))
    sizes = [(height, width)] + ([tuple(given_size)] if given_size is not None else [])
    fits_frames = values.ndim == 2 or (values.ndim == 3 and values.shape[0] == num_frames)
    if not fits_frames or tuple(values.shape[-2:]) not in sizes:
        given = f", or the {given_size[0]}x{given_size[1]} of the image / video given" if given_size else ""
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}, which does not fit the clip: expected ({height}, {width}) "
            f"or ({num_frames}, {height}, {width}) [f, h, w]{given}"
        )
    values = values.expand(num_frames, *values.shape[-2:])[:, None]  # [f, 1, h', w']
    values = fit_frames(values, height, width, name, crop=crop, mask=True)[:, 0]
    return (values > MASK_THRESHOLD).float().contiguous()


def check_mask_covers(region: torch.Tensor, task: str, if_empty: str, if_full: str) -> None:
    """A mask that marks nothing or everything is a ``ValueError`` saying what to do instead."""
    if not bool(region.any()):
        raise ValueError(
            f"mask is all zero: for {task} it must mark the region to change ({if_empty} otherwise)"
        )
    if bool(region.all()):
        raise ValueError(f"mask is all one: nothing of the input is kept; use {if_full} instead")
