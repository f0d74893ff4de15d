"""The web page's request handlers in plain Python (no Gradio): validate, generate, keep results.

``Studio`` wraps a ``LumierePipeline`` for a server: every handler checks its inputs against
``Caps`` (frames, steps, size, upload size), reads uploads with the library's loaders
(``lumiere.pipelines.inputs``: formats, pixel limits, centre crop, masks) and words their refusals
for the page, calls the pipeline with a progress callback and a deadline, writes the clip as mp4
and adds it to a bounded ``Gallery`` of recent results. A request the server cannot honour raises ``WebError`` with a
message meant for the person at the page (the UI shows it and keeps serving).

Modes (Bar-Tal et al. 2024, Sec. 4), with the pipeline call each makes:
    text         pipe(prompt)                        text-to-video
    image        pipe(prompt, image=I)               image-to-video (I is the first frame)
    cinemagraph  pipe(prompt, image=I, mask=M)       animate the region M of the image I
    inpaint      pipe(prompt, video=V, mask=M)       regenerate the region M of the video V
    video        pipe(prompt, video=V, strength=s)   video-to-video (SDEdit from noise level s)

Image, cinemagraph and inpainting need a conditional model (the base STUNet widened to take the
masked clip and the mask, stage ``conditional``); video-to-video (SDEdit) works with any model.
Which modes the loaded model can run is read once (``mode_support``), so the page says so
instead of failing.

Axis legend: f frames, h height, w width; frames are numpy ``[f, h, w, 3]`` float in [0, 1].
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from lumiere.data.video_io import write_video
from lumiere.errors import InvalidArgument
from lumiere.models.conditional import is_conditional_stunet
from lumiere.pipelines import inputs
from lumiere.pipelines.lumiere import sdedit_step_count

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (denoising steps done, total steps)

MODES: dict[str, str] = {  # mode -> label on the page
    "text": "Text to video",
    "image": "Image to video",
    "cinemagraph": "Cinemagraph",
    "inpaint": "Inpainting",
    "video": "Video to video",
}
# Modes that need a conditional model: one whose STUNet also takes the masked clip C and the mask M
# (concat(noisy video, C, M), Sec. 4). SDEdit only noises and denoises, so any model can run it.
_NEEDS_CONDITIONAL_MODEL: dict[str, bool] = {
    "text": False,
    "image": True,
    "cinemagraph": True,
    "inpaint": True,
    "video": False,
}


class WebError(Exception):
    """A request the server refuses or cannot finish; ``str(err)`` is shown on the page."""


class InputError(WebError, ValueError):
    """A value or an upload outside what the server accepts."""


class GenerationTimeout(WebError, TimeoutError):
    """Generation ran past ``Caps.timeout_s``."""


class QueueFull(WebError):
    """Too many requests waiting: from everyone (``Caps.queue_size``) or from this client
    (``Caps.max_queued_per_client``)."""


# The pipeline's argument names as the page labels them: a refusal (lumiere.errors.InvalidArgument)
# is shown in the page's words ("Frames: must be a positive multiple of 2 ...").
PAGE_NAMES = {
    "num_frames": "Frames", "num_inference_steps": "Steps", "guidance_scale": "Guidance", "height": "Height",
    "width": "Width", "strength": "Strength", "image": "the image", "video": "the video", "mask": "the region",
    "prompt": "the prompt", "negative_prompt": "the negative prompt",
}  # fmt: skip


@dataclass(frozen=True)
class Caps:
    """Limits that protect the server: every request is checked against them."""

    max_frames: int = 80  # frames per clip (80: the paper's 5 s at 16 fps); memory and time grow with frames
    max_steps: int = 100  # denoising steps: time grows linearly with steps
    max_size: int = 256  # base height and width in pixels (the SSR, if any, multiplies them)
    max_guidance: float = 20.0  # guidance scale; far beyond ~5 only saturates the output
    max_prompt_chars: int = 1000  # text encoders truncate long prompts anyway
    max_upload_bytes: int = 50 * 2**20  # one uploaded file
    max_upload_pixels: int = 4096 * 4096  # one uploaded image or video frame (decompression bombs)
    timeout_s: float = 600.0  # one request, from the start of denoising; checked at every base-model step
    gallery_size: int = 12  # recent results kept on disk and shown
    queue_size: int = 16  # requests waiting in line; more are turned away
    max_queued_per_client: int = 2  # requests one client (address) may have waiting or running
    fps: float = 8.0  # frame rate of the written mp4

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_steps", "max_size", "max_prompt_chars", "max_upload_bytes",
                     "max_upload_pixels", "gallery_size", "queue_size", "max_queued_per_client"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Caps.{name}={value!r}: must be an integer >= 1")
        for name in ("max_guidance", "timeout_s", "fps"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Caps.{name}={value!r}: must be > 0")


@dataclass(frozen=True)
class Settings:
    """One request's sampling settings, checked against the caps and the model."""

    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    height: int  # base height (before SSR)
    width: int  # base width (before SSR)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``LumierePipeline.__call__`` these settings stand for."""
        arguments = dataclasses.asdict(self)
        seed = arguments.pop("seed")
        return arguments | {"generator": torch.Generator().manual_seed(seed)}


@dataclass(frozen=True)
class Result:
    """One generated clip on disk."""

    path: Path  # the mp4
    mode: str  # a key of MODES
    prompt: str
    settings: Settings
    shape: tuple[int, int, int]  # (f, h, w) of the written clip (after SSR)
    seconds: float  # generation time
    strength: float | None = None  # video-to-video: how much of the video was re-generated

    @property
    def caption(self) -> str:
        prompt = self.prompt if len(self.prompt) <= 60 else self.prompt[:57] + "..."
        return f"{MODES[self.mode]}: {prompt} (seed {self.settings.seed})"

    @property
    def summary(self) -> str:
        f, h, w = self.shape
        s = self.settings
        strength = f"strength {self.strength:g} · " if self.strength is not None else ""
        return (
            f"{MODES[self.mode]} · {f} frames at {w}×{h} · {s.num_inference_steps} steps · {strength}"
            f"guidance {s.guidance_scale:g} · seed {s.seed} · {self.seconds:.1f} s"
        )


# ---------------------------------------------------------------------------------------------
# Gallery of recent results
# ---------------------------------------------------------------------------------------------


class Gallery:
    """The ``capacity`` most recent results, newest first; older files are deleted (thread-safe)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: must be >= 1")
        self._results: deque[Result] = deque()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, result: Result) -> None:
        with self._lock:
            self._results.appendleft(result)
            while len(self._results) > self._capacity:
                old = self._results.pop()
                old.path.unlink(missing_ok=True)

    def results(self) -> list[Result]:
        with self._lock:
            return list(self._results)

    def items(self) -> list[tuple[str, str]]:
        """(path, caption) pairs, newest first: what an image/video gallery widget shows."""
        return [(str(r.path), r.caption) for r in self.results()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)


# ---------------------------------------------------------------------------------------------
# What the pipeline can do
# ---------------------------------------------------------------------------------------------


def mode_support(pipe: Any) -> dict[str, str | None]:
    """For each mode, None when ``pipe`` can run it, else why not (a sentence for the page).

    Image, cinemagraph and inpainting need the base STUNet to be conditional
    (``lumiere.models.conditional.is_conditional_stunet``); text and video-to-video run on any.
    """
    stunet = getattr(pipe, "stunet", None)
    if stunet is None:
        reason = "This model has no base video model (it can only upsample), so it cannot generate."
        return dict.fromkeys(MODES, reason)
    conditional = is_conditional_stunet(stunet)
    support: dict[str, str | None] = {}
    for mode, needs_conditional_model in _NEEDS_CONDITIONAL_MODEL.items():
        if needs_conditional_model and not conditional:
            support[mode] = (
                f"{MODES[mode]} needs a conditional model (fine-tuned to take an image or a video with "
                "a mask: stage 'conditional', Lumiere Sec. 4); this model generates from text only. "
                f"Serve a conditional model with --model. {MODES['text']} and {MODES['video']} work "
                "with this one."
            )
        else:
            support[mode] = None
    return support


# ---------------------------------------------------------------------------------------------
# Uploads -> arrays
# ---------------------------------------------------------------------------------------------


def _check_file(path: str | Path, what: str, caps: Caps) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The {what} upload is missing; upload it again.")
    size = path.stat().st_size
    if size > caps.max_upload_bytes:
        raise InputError(
            f"The {what} is {size / 2**20:.1f} MB; this server takes files up to "
            f"{caps.max_upload_bytes / 2**20:.0f} MB."
        )
    if size == 0:
        raise InputError(f"The {what} file is empty.")
    return path


@contextmanager
def _page_errors(what: str, caps: Caps, unreadable: str) -> Iterator[None]:
    """The library's refusals of an upload (``lumiere.pipelines.inputs``) as messages for the
    page, without server paths; ``unreadable`` says what an undecodable file is not."""
    try:
        yield
    except inputs.OversizedInputError as err:
        size = f"{err.width}×{err.height}" if err.width is not None else f"{err.pixels:,}"
        raise InputError(
            f"The {what} is {size} pixels; this server takes images up to {caps.max_upload_pixels:,} pixels."
        ) from None
    except inputs.UnreadableInputError as err:
        logger.info("unreadable upload: %s", err)
        raise InputError(f"The {what} {unreadable} ({_cause(err.reason)}).") from None
    except ValueError as err:
        raise InputError(f"The {what} is not usable: {_cause(str(err))}.") from None


def _open_image(image: Any, what: str, caps: Caps, mode: str = "RGB") -> PIL.Image.Image:
    """An upload (path, PIL image, array) as a PIL image in ``mode``: size, pixels and format
    checked (transparent pixels become white in RGB, as an image viewer shows them)."""
    if isinstance(image, (str, Path)):
        image = _check_file(image, what, caps)
    with _page_errors(what, caps, "is not an image this server can read"):
        return inputs.open_image(image, what, mode, max_pixels=caps.max_upload_pixels)


def fit_image(image: PIL.Image.Image, height: int, width: int, mask: bool = False) -> np.ndarray:
    """Centre-crop to the aspect ratio of height x width and resize: float32 ``[h, w, 3]`` in [0, 1]
    (an image), or ``[h, w]`` in {0, 1} (a mask, ``mask=True``: binarised at 0.5)."""
    if mask:
        painted = np.asarray(image.convert("L"))
        return inputs.load_mask(painted, 1, height, width, given_size=painted.shape, crop=True)[0].numpy()
    return _channels_last(inputs.fit_frames(inputs.decode_image(image), height, width, "image", crop=True))[0]


def _channels_last(frames: torch.Tensor) -> np.ndarray:
    """Library frames ``[n, 3, h, w]`` -> float32 ``[n, h, w, 3]``: the arrays the page hands the pipeline."""
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def load_image(image: Any, height: int, width: int, caps: Caps, what: str = "image") -> np.ndarray:
    """An uploaded image (path, PIL, array) -> float32 ``[h, w, 3]`` in [0, 1], centre-cropped and
    resized to the video's size. ``InputError`` for a file that is not a readable image, too big,
    or too many pixels."""
    return fit_image(_open_image(image, what, caps), height, width)


def load_mask(
    editor: Mapping[str, Any] | None,
    height: int,
    width: int,
    caps: Caps,
    what: str = "region",
    instead: str = "",  # what to use when everything is painted, e.g. "use Image to video"
) -> tuple[PIL.Image.Image, np.ndarray]:
    """An image-editor value -> (background image, mask float32 ``[h, w]`` in {0, 1}).

    ``editor`` is ``{"background": image, "layers": [image, ...], "composite": image}`` (Gradio's
    ImageEditor; images as paths, PIL or arrays). The mask is every pixel painted on any layer
    (alpha > 0), cropped and resized like the background. ``InputError`` when nothing is painted,
    or everything (the model then has nothing to keep).
    """
    if editor is not None and not isinstance(editor, Mapping):
        raise InputError(f"The painted image must come from the image editor; got {_kind(editor)}.")
    if not editor or editor.get("background") is None:
        raise InputError("Upload an image first, then paint the region on it.")
    background = _open_image(editor["background"], "image", caps)
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        rgba = _open_image(layer, "painted layer", caps, mode="RGBA")
        if rgba.size != background.size:
            rgba = rgba.resize(background.size, resample=PIL.Image.Resampling.NEAREST)
        painted |= np.asarray(rgba)[..., 3] > 0
    if not painted.any():
        raise InputError(f"Paint the {what} on the image with the brush first.")
    # Cropped and resized as the background is: nearest, binary (lumiere.pipelines.inputs).
    mask = inputs.load_mask(painted, 1, height, width, given_size=painted.shape, crop=True)[0].numpy()
    if not mask.any():
        raise InputError(f"The painted {what} vanishes at {width}×{height}; paint a larger region.")
    if mask.all():
        raise InputError(
            f"The painted {what} covers the whole image, so nothing of it would be kept; leave part of "
            f"it unpainted{' or ' + instead if instead else ''}."
        )
    return background, mask


def load_video(
    path: str | Path | None, num_frames: int, height: int, width: int, caps: Caps, what: str = "video"
) -> np.ndarray:
    """The first ``num_frames`` frames of an uploaded video -> float32 ``[f, h, w, 3]`` in [0, 1],
    centre-cropped and resized. Decodes no more than it needs. ``InputError`` for a file that is
    missing, too big, not a video, broken, too short, or of too many pixels per frame."""
    if path is None:
        raise InputError(f"Upload a {what} first.")
    if not isinstance(path, (str, Path)):
        raise InputError(f"The {what} must be an uploaded file; got {_kind(path)}.")
    path = _check_file(path, what, caps)
    with _page_errors(what, caps, "cannot be decoded; it is not a video this server can read"):
        frames = inputs.decode_video(path, what, max_frames=num_frames, max_pixels=caps.max_upload_pixels)
    if len(frames) < num_frames:
        raise InputError(
            f"The {what} has {len(frames)} frames, fewer than the {num_frames} asked for; "
            "lower Frames or upload a longer video."
        )
    return _channels_last(inputs.fit_frames(frames, height, width, what, crop=True))


def first_frame(path: str | Path | None, caps: Caps) -> np.ndarray | None:
    """The first frame of an uploaded video as uint8 ``[h, w, 3]`` at its own size (for painting a
    mask on it); None for no upload. ``InputError`` as ``load_video``."""
    if path is None:
        return None
    path = _check_file(path, "video", caps)
    with _page_errors("video", caps, "cannot be decoded"):
        return inputs.read_video_file(path, "video", max_frames=1, max_pixels=caps.max_upload_pixels)[0]


# Studio: the request handlers
# ---------------------------------------------------------------------------------------------


class Studio:
    """A pipeline behind a web page: validated requests, one generation at a time, recent results.

    ``pipe`` is a ``LumierePipeline`` (anything with its call signature and ``stunet``).
    Results are written under ``output_dir`` (default: a fresh temporary directory).
    """

    def __init__(self, pipe: Any, caps: Caps | None = None, output_dir: str | Path | None = None):
        self.pipe = pipe
        self.caps = caps if caps is not None else Caps()
        self.support = mode_support(pipe)
        self.output_dir = (
            Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="lumiere-web-"))
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.gallery = Gallery(self.caps.gallery_size)
        self._lock = threading.Lock()  # the pipeline (its scheduler) runs one request at a time
        self._count = 0
        self._admitted: dict[str, int] = {}  # client -> its requests waiting or running
        self._admission = threading.Lock()
        stunet = pipe.stunet
        self.frame_step = stunet.temporal_factor if stunet is not None else 1
        self.size_step = stunet.spatial_factor if stunet is not None else 1
        size = stunet.config.unet_config.get("sample_size") if stunet is not None else None
        size = (size, size) if isinstance(size, int) else tuple(size or (32, 32))
        self.default_height, self.default_width = (self._clamp_size(int(s)) for s in size)
        self.ssr_scale = pipe.ssr_scale if getattr(pipe, "ssr", None) is not None else 1

    # ----- limits the page shows --------------------------------------------------------------

    def _clamp_size(self, size: int) -> int:
        top = self.caps.max_size - self.caps.max_size % self.size_step
        return max(self.size_step, min(size, top))

    @property
    def max_frames(self) -> int:
        """The largest frame count the caps allow that the model takes."""
        return max(self.frame_step, self.caps.max_frames - self.caps.max_frames % self.frame_step)

    @property
    def max_size(self) -> int:
        return self._clamp_size(self.caps.max_size)

    @property
    def default_frames(self) -> int:
        return min(self.max_frames, max(self.frame_step, 16 - 16 % self.frame_step))

    @property
    def default_steps(self) -> int:
        return min(self.caps.max_steps, 25)

    # ----- admission ----------------------------------------------------------------------------

    @contextmanager
    def admit(self, client: str | None) -> Iterator[None]:
        """Hold a place in line for one request of ``client`` (an address; None: unknown) for the
        duration of the block: ``QueueFull`` when the client already has
        ``caps.max_queued_per_client`` requests waiting or running, or everyone ``caps.queue_size``.
        Generation itself stays one at a time (``generate``)."""
        key = client or "unknown"
        with self._admission:
            mine, everyone = self._admitted.get(key, 0), sum(self._admitted.values())
            if mine >= self.caps.max_queued_per_client:
                raise QueueFull(
                    f"You already have {mine} request{'s' if mine > 1 else ''} in line; wait for "
                    f"{'them' if mine > 1 else 'it'} to finish before asking for more."
                )
            if everyone >= self.caps.queue_size:
                raise QueueFull(f"The server is busy ({everyone} requests in line); try again in a minute.")
            self._admitted[key] = mine + 1
        try:
            yield
        finally:
            with self._admission:
                self._admitted[key] -= 1
                if not self._admitted[key]:
                    del self._admitted[key]

    # ----- checks -------------------------------------------------------------------------------

    def settings(
        self,
        num_frames: float,
        num_inference_steps: float,
        guidance_scale: float,
        seed: float | None,
        height: float | None = None,
        width: float | None = None,
    ) -> Settings:
        """Check the page's numbers (widgets send floats) against the caps and the model."""
        caps = self.caps
        frames = _whole(num_frames, "Frames")
        if not self.frame_step <= frames <= self.max_frames or frames % self.frame_step:
            raise InputError(
                f"Frames must be a multiple of {self.frame_step} from {self.frame_step} to "
                f"{self.max_frames}; got {frames}."
            )
        steps = _whole(num_inference_steps, "Steps")
        if not 1 <= steps <= caps.max_steps:
            raise InputError(f"Steps must be from 1 to {caps.max_steps}; got {steps}.")
        guidance = _number(guidance_scale, "Guidance")
        if not 0 <= guidance <= caps.max_guidance:
            raise InputError(f"Guidance must be from 0 to {caps.max_guidance:g}; got {guidance:g}.")
        seed_value = 0 if seed is None else _whole(seed, "Seed")
        if not 0 <= seed_value < 2**63:
            raise InputError(f"Seed must be from 0 to 2**63 - 1; got {seed_value}.")
        sizes = []
        for name, value, default in (
            ("Height", height, self.default_height),
            ("Width", width, self.default_width),
        ):
            size = default if value is None else _whole(value, name)
            if not self.size_step <= size <= self.max_size or size % self.size_step:
                raise InputError(
                    f"{name} must be a multiple of {self.size_step} from {self.size_step} to "
                    f"{self.max_size}; got {size}."
                )
            sizes.append(size)
        return Settings(frames, steps, guidance, seed_value, *sizes)

    def check_prompt(self, prompt: str | None, what: str = "prompt") -> str:
        """The prompt, stripped; ``InputError`` for none, an empty one, one that is not text (a
        number or a list sent through the API is refused, not turned into text) or a long one."""
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"The {what} must be text; got {_kind(prompt)}.")
        if prompt is None or not prompt.strip():
            raise InputError("Write a prompt first: describe the video you want.")
        prompt = prompt.strip()
        if len(prompt) > self.caps.max_prompt_chars:
            raise InputError(
                f"The prompt has {len(prompt)} characters; the limit is {self.caps.max_prompt_chars}."
            )
        return prompt

    def check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InputError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
        reason = self.support[mode]
        if reason is not None:
            raise InputError(reason)

    # ----- handlers -----------------------------------------------------------------------------

    def text_to_video(
        self, prompt: str, negative_prompt: str | None, settings: Settings, progress: ProgressFn | None = None
    ) -> Result:
        return self.generate("text", prompt, negative_prompt, settings, progress)

    def image_to_video(
        self,
        prompt: str,
        negative_prompt: str | None,
        image: Any,  # path, PIL image or array
        settings: Settings,
        progress: ProgressFn | None = None,
    ) -> Result:
        self.check_mode("image")
        if image is None:
            raise InputError("Upload an image first: it becomes the first frame.")
        first = load_image(image, settings.height, settings.width, self.caps)
        return self.generate("image", prompt, negative_prompt, settings, progress, image=first)

    def cinemagraph(
        self,
        prompt: str,
        negative_prompt: str | None,
        editor: Mapping[str, Any] | None,  # image with the region to animate painted on it
        settings: Settings,
        progress: ProgressFn | None = None,
    ) -> Result:
        self.check_mode("cinemagraph")
        background, mask = load_mask(
            editor, settings.height, settings.width, self.caps, "region to animate",
            instead=f"use {MODES['image']} to animate everything",
        )  # fmt: skip
        image = fit_image(background, settings.height, settings.width)
        return self.generate(
            "cinemagraph", prompt, negative_prompt, settings, progress, image=image, mask=mask
        )

    def inpaint(
        self,
        prompt: str,
        negative_prompt: str | None,
        video: str | Path | None,
        editor: Mapping[str, Any] | None,  # the video's first frame with the region to fill painted on it
        settings: Settings,
        progress: ProgressFn | None = None,
    ) -> Result:
        self.check_mode("inpaint")
        frames = load_video(video, settings.num_frames, settings.height, settings.width, self.caps)
        _, mask = load_mask(
            editor, settings.height, settings.width, self.caps, "region to fill",
            instead=f"use {MODES['video']} to change everything",
        )  # fmt: skip
        masks = np.repeat(mask[None], settings.num_frames, axis=0)  # [h, w] -> [f, h, w], fixed in time
        return self.generate("inpaint", prompt, negative_prompt, settings, progress, video=frames, mask=masks)

    def video_to_video(
        self,
        prompt: str,
        negative_prompt: str | None,
        video: str | Path | None,
        strength: float,
        settings: Settings,
        progress: ProgressFn | None = None,
    ) -> Result:
        self.check_mode("video")
        strength = _number(strength, "Strength")
        if not 0 < strength <= 1:
            raise InputError(f"Strength must be in (0, 1]; got {strength:g}.")
        frames = load_video(video, settings.num_frames, settings.height, settings.width, self.caps)
        return self.generate(
            "video", prompt, negative_prompt, settings, progress, video=frames, strength=strength
        )

    # ----- generation ---------------------------------------------------------------------------

    def generate(
        self,
        mode: str,
        prompt: str,
        negative_prompt: str | None,
        settings: Settings,
        progress: ProgressFn | None = None,
        **conditioning: Any,  # image / video / mask / strength, as the mode takes them
    ) -> Result:
        """Run the pipeline once, write the mp4, add it to the gallery.

        ``progress(done, total)`` is called after every denoising step of the base model (SDEdit
        runs only the last ``strength`` of the steps: ``total`` counts those). Past
        ``caps.timeout_s`` the next step raises ``GenerationTimeout`` (the work stops there).
        """
        self.check_mode(mode)
        prompt = self.check_prompt(prompt)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InputError(f"The negative prompt must be text; got {_kind(negative_prompt)}.")
        negative = negative_prompt.strip() if negative_prompt and negative_prompt.strip() else None
        strength = conditioning.get("strength")
        total = settings.num_inference_steps
        if strength is not None:
            total = sdedit_steps(total, strength)
        with self._lock:
            start = time.monotonic()
            deadline = start + self.caps.timeout_s

            def callback(step: int, timestep: torch.Tensor, sample: torch.Tensor) -> None:
                if progress is not None:
                    progress(min(step + 1, total), total)
                if time.monotonic() > deadline:
                    raise GenerationTimeout(
                        f"Generation took longer than {self.caps.timeout_s:g} s and was stopped after "
                        f"{step + 1} of {total} steps; ask for fewer frames or steps."
                    )

            if progress is not None:
                progress(0, total)
            logger.info("%s: %r, %s", mode, prompt, settings)
            try:
                arguments = settings.pipeline_arguments() | conditioning
                output = self.pipe(
                    prompt, negative_prompt=negative, callback=callback, output_type="np", **arguments
                )
                frames = output.frames[0]  # [f, h, w, 3] in [0, 1]
            except WebError:
                raise
            except InvalidArgument as err:  # the pipeline names the argument: the page names its field
                got = f" (got {err.value})" if err.has_value else ""
                name = PAGE_NAMES.get(err.argument, err.argument)
                raise InputError(
                    f"{name[:1].upper() + name[1:]}: {err.requirement_for(PAGE_NAMES)}{got}."
                ) from err
            except ValueError as err:  # the pipeline names what it cannot take
                raise InputError(str(err)) from err
            except MemoryError as err:  # InsufficientMemoryError: refused before any allocation
                logger.warning("refused: %s", err)
                raise WebError(
                    "This server does not have the memory for this request; ask for fewer frames or a "
                    "smaller size."
                ) from err
            seconds = time.monotonic() - start
            self._count += 1
            path = self.output_dir / f"lumiere-{self._count:04d}-{mode}-{_slug(prompt)}.mp4"
        try:
            write_video(path, frames, fps=self.caps.fps)  # atomic: no half-written clip is served
        except OSError as err:
            logger.error("cannot save a result: %s", err)
            reason = (
                "its disk is full" if err.errno == errno.ENOSPC else "its result folder cannot be written"
            )
            raise WebError(
                f"The clip was made but the server could not save it: {reason}. Try again later."
            ) from err
        result = Result(path, mode, prompt, settings, tuple(frames.shape[:3]), seconds, strength)
        self.gallery.add(result)
        logger.info("wrote %s (%.1f s)", path, seconds)
        return result


def sdedit_steps(num_inference_steps: int, strength: float) -> int:
    """The progress bar's total for video-to-video: the steps the pipeline runs."""
    return sdedit_step_count(num_inference_steps, strength)


def _cause(reason: str) -> str:
    """Why a file could not be read, for the page: the decoder's words without server paths."""
    return re.sub(r"""[:\s]*['"]?/[^'"]*['"]?""", "", reason).strip() or "unknown reason"


def _kind(value: Any) -> str:
    """What a value is, for the page: "a number", "a list", "text"."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float, np.number)):
        return "a number"
    return {str: "text", list: "a list", tuple: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _number(value: Any, name: str) -> float:
    """A number from a widget's value; text, booleans and other types are refused, not converted
    (an API client sending "5" gets told, not silently served)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{name} must be a number; got {_kind(value)} {value!r}.")
    return float(value)


def _whole(value: Any, name: str) -> int:
    """A whole number from a widget's value (ints arrive as floats), else ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{name} must be a whole number; got {_kind(value)} {value!r}.")
    number = float(value)
    if not np.isfinite(number) or number != int(number):
        raise InputError(f"{name} must be a whole number; got {value!r}.")
    return int(number)


def remove_uploads(values: Any, root: str | Path) -> int:
    """Delete the uploaded files among ``values`` (paths, and paths inside lists and the image
    editor's mappings) that lie under ``root`` (the web framework's upload folder: nothing
    else is touched); returns how many. Called when a request ends, so uploads do not outlive it."""
    root = Path(root).resolve()
    removed = 0
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, (str, Path)) and str(value):
            path = Path(value).resolve()
            if path.is_file() and path.is_relative_to(root):
                path.unlink(missing_ok=True)
                removed += 1
                with contextlib.suppress(OSError):  # the per-upload folder, once empty
                    path.parent.rmdir()
    return removed


def _slug(text: str, limit: int = 40) -> str:
    """File-name-safe words of a prompt: "A red circle!" -> "a-red-circle"."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > limit:  # whole words only
        slug = slug[: limit + 1].rsplit("-", 1)[0] if "-" in slug[:limit] else slug[:limit]
    return slug or "clip"
