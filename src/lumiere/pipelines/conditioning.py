"""What a pipeline call is conditioned on (Sec. 4): the task, the given clip and which pixels are known.

``prepare_conditioning`` reads ``image=``, ``video=``, ``mask=``, ``strength=`` of a pipeline call
(through ``lumiere.pipelines.inputs``) and decides the task:

    nothing            text-to-video
    image              image-to-video   the image is the first frame
    image + mask       cinemagraph      the image repeated over time, the mask marks what moves
    video + mask       inpainting       the mask marks the region to generate
    video              video-to-video   SDEdit (Meng et al. 2022) from noise level ``strength``

The first three need a conditional base model (``lumiere.models.conditional``): it takes
concat(noisy clip, masked clip C, known-mask M). ``KnownPixels`` re-imposes the given pixels
during sampling (the replacement method of diffusers' inpainting pipelines).

Axis legend: b clips, c channels, f frames, h/w height/width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lumiere.errors import InvalidArgument
from lumiere.models.conditional import (
    MaskCondition,
    empty_condition,
    make_mask_condition,
    mask_condition_channels,
)
from lumiere.pipelines.inputs import (
    ImageInput,
    MaskInput,
    VideoInput,
    check_mask_covers,
    decode_image,
    decode_video,
    fit_frames,
    load_mask,
)

DEFAULT_NUM_FRAMES = 16  # text-to-video and image-to-video clips, when num_frames is not given
DEFAULT_STRENGTH = 0.6  # video-to-video: how much of the video is re-generated


@dataclass
class KnownPixels:
    """Given pixels (or latents) to re-impose during sampling: clip ``[1, c, f, h, w]``, known-mask
    ``[1, 1, f, h, w]`` (1 = given) and a fixed noise ``[b, c, f, h, w]`` to noise them with."""

    clip: torch.Tensor
    known: torch.Tensor
    noise: torch.Tensor

    def impose(self, sample: torch.Tensor, scheduler: SchedulerMixin, timestep: torch.Tensor) -> torch.Tensor:
        """``sample`` with the known pixels replaced by the clip noised to ``timestep`` (a 1-element
        tensor; empty: the clean clip)."""
        clip = self.clip.expand_as(sample)
        if len(timestep):
            clip = scheduler.add_noise(clip, self.noise, timestep.reshape(1).expand(sample.shape[0]))
        return self.known * clip + (1 - self.known) * sample


@dataclass
class Conditioning:
    """A call's conditioning, read and checked: the task, the clip length and, when conditioned,
    the clip ``[3, f, h, w]`` in [-1, 1], the known-mask ``[f, h, w]`` and SDEdit's strength."""

    task: str  # text-to-video, image-to-video, inpainting, cinemagraph, video-to-video
    num_frames: int
    clip: torch.Tensor | None = None
    known: torch.Tensor | None = None  # None: nothing is kept (text-to-video, video-to-video)
    strength: float | None = None  # video-to-video only
    keep_known: bool = True  # re-impose the known pixels at every step (KnownPixels)

    @property
    def is_sdedit(self) -> bool:
        return self.task == "video-to-video"

    def check_model(self, conditional: bool, extra_channels: int, sample_channels: int = 3) -> None:
        """``ValueError`` when the base model cannot take this conditioning: a known region needs a
        conditional model; a model widened otherwise (an SSR's input, say) is no base model.
        ``sample_channels``: of what the model denoises (3 pixels; 4 SD latents)."""
        expected = mask_condition_channels(sample_channels)
        if extra_channels and not conditional:
            raise ValueError(
                f"this STUNet takes {extra_channels} extra input channels "
                f"but a conditional base model takes {expected} (masked clip and mask)"
            )
        if self.known is not None and not conditional:
            raise ValueError(
                f"{self.task} needs a conditional model (stage 'conditional', {expected} extra "
                "input channels); this pipeline's stunet is text-to-video only. Video-to-video (video= without "
                "mask=) works with any model"
            )

    def to_latents(self, encode: Callable[[torch.Tensor], torch.Tensor], factor: int) -> Conditioning:
        """This conditioning in a latent space ``factor`` times coarser: the clip encoded
        (``encode``: ``[1, 3, f, h, w]`` -> ``[1, c, f, h/factor, w/factor]``) and the known-mask on
        the latent grid, where a latent counts as known only when all its pixels are (a latent
        cell holding unknown pixels is generated; the known pixels are pasted back exactly after
        decoding, ``composite``)."""
        if self.clip is None:
            return self
        clip = encode(self.clip[None])[0]  # [c, f, h', w']
        known = None
        if self.known is not None:
            unknown = F.max_pool2d(1 - self.known[:, None].float(), kernel_size=factor)[:, 0]  # [f, h', w']
            known = 1 - unknown
        return dataclasses.replace(self, clip=clip.cpu(), known=known)

    def composite(self, frames: torch.Tensor) -> torch.Tensor:
        """Decoded clips ``[b, 3, f, h, w]`` in [-1, 1] with the given pixels put back where known."""
        known = self.known.to(frames.device)[None, None]  # [1, 1, f, h, w]
        return known * self.clip.to(frames.device)[None] + (1 - known) * frames

    def model_condition(self, shape: tuple[int, ...], device: torch.device) -> MaskCondition:
        """The conditional model's extra input for ``shape`` ``[b, c, f, h, w]``: masked clip and
        known-mask (nothing known for text-to-video and SDEdit)."""
        if self.known is None:
            return empty_condition(shape, device=device)
        batch, _, *size = shape
        return make_mask_condition(
            self.clip.to(device)[None].expand(shape),
            self.known.to(device)[None, None].expand(batch, 1, *size),
        )

    @property
    def keeps_pixels(self) -> bool:
        """Whether sampling re-imposes given pixels (``keep_known`` and something is known)."""
        return self.keep_known and self.known is not None

    def known_pixels(self, noise: torch.Tensor) -> KnownPixels:
        """What to re-impose while sampling (when ``keeps_pixels``), noised with ``noise``
        ``[b, 3, f, h, w]``."""
        device = noise.device
        return KnownPixels(
            clip=self.clip.to(device)[None], known=self.known.to(device)[None, None], noise=noise
        )


def prepare_conditioning(
    image: ImageInput | None,
    video: VideoInput | None,
    mask: MaskInput | None,
    strength: float | None,
    keep_known: bool,
    num_frames: int | None,
    height: int,
    width: int,
) -> Conditioning:
    """Read and check image / video / mask / strength; decide the task (Sec. 4).

    A mask has the generated size (height x width) or the size of the image / video given, which
    it is then resized with (nearest, binarised: ``lumiere.pipelines.inputs.load_mask``). Raises
    ``InvalidArgument`` (a ``ValueError``) naming the argument for combinations that mean nothing,
    and ``ValueError`` for inputs that cannot be read or masks that do not fit.
    """
    if image is not None and video is not None:
        raise InvalidArgument(
            "video",
            "not allowed with {image}: give one ({image}: image-to-video or cinemagraph; {video}: inpainting "
            "or video-to-video)",
        )
    if mask is not None and image is None and video is None:
        raise InvalidArgument("mask", "needs {video} (inpainting) or {image} (cinemagraph)")
    if strength is not None and (video is None or mask is not None):
        raise InvalidArgument("strength", "applies to video-to-video only: {video} without {mask}")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)):
        raise InvalidArgument("num_frames", "must be a positive integer", num_frames)
    if image is None and video is None:
        conditioning = Conditioning("text-to-video", DEFAULT_NUM_FRAMES if num_frames is None else num_frames)
    elif video is not None:
        conditioning = _video_conditioning(video, mask, strength, num_frames, (height, width))
    else:
        frames = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
        if frames < 1:
            raise InvalidArgument("num_frames", "must be >= 1", frames)
        conditioning = _image_conditioning(image, mask, frames, (height, width))
    conditioning.keep_known = keep_known
    return conditioning


def _image_conditioning(
    image: ImageInput, mask: MaskInput | None, frames: int, size: tuple[int, int]
) -> Conditioning:
    """Image-to-video (the image is the first frame) or, with ``mask``, a cinemagraph."""
    pixels = decode_image(image)  # [1, 3, H, W] at its own size
    still = fit_frames(pixels, *size, "image")[0] * 2 - 1  # [3, h, w] in [-1, 1]
    still = still[:, None].expand(3, frames, *size).contiguous()  # [3, f, h, w]
    known = torch.zeros(frames, *size)
    task = "image-to-video"
    if mask is not None:
        region = load_mask(mask, frames, *size, given_size=tuple(pixels.shape[-2:]))
        check_mask_covers(region, "cinemagraph", "nothing moves", "image-to-video (no mask=)")
        known, task = 1 - region, "cinemagraph"
    known[0] = 1  # the image is the first frame
    return Conditioning(task, frames, clip=still, known=known)


def _video_conditioning(
    video: VideoInput,
    mask: MaskInput | None,
    strength: float | None,
    num_frames: int | None,
    size: tuple[int, int],
) -> Conditioning:
    """Inpainting (with ``mask``) or video-to-video (without) of ``video``."""
    pixels = decode_video(video)  # [f, 3, H, W] at its own size
    frames = pixels.shape[0]
    if num_frames is not None and num_frames != frames:
        raise InvalidArgument(
            "num_frames",
            f"must match the video, which has {frames} frames (leave {{num_frames}} out to take the video's "
            "length, or trim the video)",
            num_frames,
        )
    clip = fit_frames(pixels, *size, "video").permute(1, 0, 2, 3).contiguous() * 2 - 1  # [3, f, h, w]
    if mask is None:
        strength = DEFAULT_STRENGTH if strength is None else strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise InvalidArgument(
                "strength", "must be in (0, 1] (0.6 is typical; 1 re-generates from pure noise)", strength
            )
        return Conditioning("video-to-video", frames, clip=clip, strength=float(strength))
    region = load_mask(mask, frames, *size, given_size=tuple(pixels.shape[-2:]))
    check_mask_covers(region, "inpainting", "the video is returned unchanged", "text-to-video (no video=)")
    return Conditioning("inpainting", frames, clip=clip, known=1 - region)
