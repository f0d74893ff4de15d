"""Text-to-video sampling with a STUNet: ``LumierePipeline`` (Bar-Tal et al. 2024, Sec. 3).

prompt -> text encoder -> base STUNet denoising the whole clip at once (any diffusers scheduler,
classifier-free guidance here, not in the network) -> frames ``[b, f, h, w, 3]`` in [0, 1].

Later stages plug into the numbered steps of ``__call__``: spatial super-resolution with
MultiDiffusion (Sec. 3.2) after step 5, image / mask / video conditioning (Sec. 4) in step 4.

Axis legend:
    b  clips (prompts x videos per prompt)      c  channels
    f  frames      h, w  height, width          L  text tokens, d  text width
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from lumiere.models.stunet import STUNet
from lumiere.models.text import NULL_PROMPT, TextEncoder, TextEncoding, load_text_encoder

logger = logging.getLogger(__name__)

# The default model, trained by us on moving shapes, ships inside the package (a later issue).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
MODEL_INDEX = "model_index.json"  # DiffusionPipeline.config_name
OUTPUT_TYPES = ("np", "pt", "pil")

# Samplers by CLI name: scheduler class and the arguments that make it that sampler.
# "trailing" spacing starts sampling at the last training timestep, i.e. from pure noise
# (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.3);
# the training DDPM config says "leading", which would start at t = 960 of 1000 with 25 steps.
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "dpm++": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", timestep_spacing="trailing")),
    "ddim": (DDIMScheduler, dict(timestep_spacing="trailing")),
    "euler": (EulerDiscreteScheduler, dict(timestep_spacing="trailing")),
}


def make_sampling_scheduler(name: str = "dpm++", config: Mapping[str, Any] | None = None) -> SchedulerMixin:
    """A sampler (``SAMPLERS`` name) over a noise schedule ``config`` (default: the training one,
    ``lumiere.diffusion.make_noise_scheduler().config``): betas and prediction type carry over."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if config is None:
        from lumiere.diffusion.objective import make_noise_scheduler

        config = make_noise_scheduler().config
    scheduler_cls, overrides = SAMPLERS[name]
    return scheduler_cls.from_config(config, **overrides)


@dataclass
class LumierePipelineOutput(BaseOutput):
    """Output of ``LumierePipeline``.

    frames: ``[b, f, h, w, 3]`` float32 in [0, 1]: a numpy array ("np"), a torch tensor ("pt"),
        or a list of b lists of f PIL images ("pil"). Clips are prompt-major: prompt 0's videos
        first.
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]


class LumierePipeline(DiffusionPipeline):
    """Text-to-video with Lumiere's Space-Time U-Net.

    Components: ``stunet`` (the base ``STUNet``), ``text_encoder`` (a ``lumiere.models.text``
    ``TextEncoder``) and ``scheduler`` (any diffusers scheduler over the training noise schedule;
    swap with ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``).
    """

    model_cpu_offload_seq = "text_encoder->stunet"

    def __init__(self, stunet: STUNet, text_encoder: TextEncoder, scheduler: SchedulerMixin):
        super().__init__()
        text_width = _text_width(stunet)
        if text_width is not None and text_width != text_encoder.dim:
            raise ValueError(
                f"text_encoder gives {text_encoder.dim}-d states but the stunet's cross-attention takes "
                f"{text_width}-d; use an encoder of width {text_width}"
            )
        self.register_modules(stunet=stunet, text_encoder=text_encoder, scheduler=scheduler)

    @classmethod
    def from_stunet(
        cls,
        stunet: STUNet,
        text_encoder: TextEncoder | None = None,  # default: MiniLM (load_text_encoder(None))
        scheduler: SchedulerMixin | None = None,  # default: DPM-Solver++ over the training schedule
    ) -> LumierePipeline:
        """A pipeline around a STUNet, with default text encoder and sampler where not given."""
        return cls(
            stunet=stunet,
            text_encoder=text_encoder if text_encoder is not None else load_text_encoder(None),
            scheduler=scheduler if scheduler is not None else make_sampling_scheduler("dpm++"),
        )

    # ----- placement --------------------------------------------------------------------------

    def to(
        self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> LumierePipeline:
        """Move the networks to ``device``; ``dtype`` casts the STUNet only (the text encoder keeps
        its own precision; its states are cast when fed to the STUNet). ``pipe.to(torch.bfloat16)``
        works too. (diffusers' own ``to`` expects every component to be a diffusers model.)"""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if device is not None:
            self.text_encoder.to(device)
        self.stunet.to(device=device, dtype=dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The STUNet's dtype (what the pipeline computes in)."""
        return self.stunet.dtype

    # ----- save / load ------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``stunet/``, ``text_encoder/``, ``scheduler/`` and ``model_index.json``.

        ``kwargs`` go to ``STUNet.save_pretrained`` (e.g. ``variant``); weights are safetensors.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.stunet.save_pretrained(directory / "stunet", safe_serialization=True, **kwargs)
        self.text_encoder.save_pretrained(directory / "text_encoder")
        self.scheduler.save_pretrained(directory / "scheduler")
        self.save_config(directory)  # model_index.json: class names of the components

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> LumierePipeline:
        """Load a directory written by ``save_pretrained``; no path: the model shipped in the package.

        Only local directories are read (nothing is downloaded). The scheduler's class comes from
        its saved ``_class_name`` and must be a diffusers scheduler.
        """
        if path is None:
            if not (DEFAULT_MODEL_DIR / MODEL_INDEX).is_file():
                raise FileNotFoundError(
                    f"the default lumiere model is not shipped yet (no {DEFAULT_MODEL_DIR / MODEL_INDEX}); "
                    "pass the path of a directory written by LumierePipeline.save_pretrained"
                )
            path = DEFAULT_MODEL_DIR
        directory = Path(path)
        if not (directory / MODEL_INDEX).is_file():
            raise FileNotFoundError(
                f"{directory / MODEL_INDEX} not found: {str(directory)!r} is not a directory written by "
                "LumierePipeline.save_pretrained"
            )
        for sub in ("stunet", "text_encoder", "scheduler"):
            if not (directory / sub).is_dir():
                raise FileNotFoundError(f"{directory} has no {sub}/ folder; it is not a complete pipeline")

        stunet = STUNet.from_pretrained(directory / "stunet", torch_dtype=torch_dtype)
        text_encoder = TextEncoder.from_pretrained(directory / "text_encoder")
        scheduler = _load_scheduler(directory / "scheduler")
        pipe = cls(stunet=stunet, text_encoder=text_encoder, scheduler=scheduler)
        pipe.register_to_config(_name_or_path=str(directory))
        return pipe

    # ----- steps of __call__ ------------------------------------------------------------------

    def check_inputs(
        self,
        prompt: str | list[str],
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        negative_prompt: str | list[str] | None,
        num_videos_per_prompt: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
    ) -> list[str]:
        """Raise ``ValueError`` naming the bad argument and what it accepts; return the prompts."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt is an empty list; give at least one non-empty prompt")
        for p in prompts:
            if not isinstance(p, str):
                raise ValueError(f"prompt must be a string or a list of strings, got {type(p).__name__}")
            if not p.strip():
                raise ValueError(
                    f"prompt {p!r} is empty; use a non-empty prompt (the empty prompt is the "
                    "unconditional input of guidance: pass negative_prompt to change it)"
                )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if len(negative_prompt) != len(prompts):
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries for {len(prompts)} prompts; "
                    "give one string, or one per prompt"
                )
        factor = self.stunet.temporal_factor
        if num_frames < 1 or num_frames % factor:
            raise ValueError(
                f"num_frames={num_frames}: this STUNet takes a positive multiple of {factor} "
                f"(e.g. {factor}, {2 * factor}, {8 * factor})"
            )
        space = self.stunet.spatial_factor
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % space:
                raise ValueError(f"{name}={size}: this STUNet takes a positive multiple of {space}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps}: must be >= 1")
        if guidance_scale < 0:
            raise ValueError(
                f"guidance_scale={guidance_scale}: must be >= 0 (<= 1 means no guidance, ~5 is typical)"
            )
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt={num_videos_per_prompt}: must be >= 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        num_clips = len(prompts) * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) != num_clips:
            raise ValueError(
                f"generator is a list of {len(generator)}; give one generator per clip "
                f"({len(prompts)} prompts x {num_videos_per_prompt} videos = {num_clips}) or a single one"
            )
        return prompts

    def encode_prompt(
        self,
        prompts: list[str],
        negative_prompt: str | list[str] | None,
        num_videos_per_prompt: int,
        do_guidance: bool,
        device: torch.device,
    ) -> tuple[TextEncoding, TextEncoding | None]:
        """-> (conditional, unconditional or None) text states ``[b, L, d]`` and masks ``[b, L]``,
        one row per clip (prompt-major). The unconditional input is the negative prompt, by
        default the empty prompt the model was trained with (caption dropout)."""
        cond = self.text_encoder.encode(prompts, device=device)
        cond = TextEncoding(*(x.repeat_interleave(num_videos_per_prompt, dim=0) for x in cond))
        if not do_guidance:
            return cond, None
        if negative_prompt is None:
            negative_prompt = NULL_PROMPT
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        uncond = self.text_encoder.encode(list(negatives), device=device)
        uncond = TextEncoding(*(x.repeat_interleave(num_videos_per_prompt, dim=0) for x in uncond))
        return cond, uncond

    def prepare_noise(
        self,
        shape: tuple[int, int, int, int, int],
        generator: torch.Generator | list[torch.Generator] | None,
        noise: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Initial sample ``[b, c, f, h, w]`` float32, scaled by the scheduler's ``init_noise_sigma``.

        Each clip's noise is drawn on its own (EDM's one-seed-per-sample), on the generator's
        device, so a clip does not depend on the rest of the batch: with a list, clip i draws from
        generator i; with one generator, clips draw one after the other.
        """
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(
                    f"noise has shape {tuple(noise.shape)}; expected {tuple(shape)} [b, c, f, h, w]"
                )
            sample = noise.to(device=device, dtype=torch.float32)
        else:
            batch = shape[0]
            generators = generator if isinstance(generator, (list, tuple)) else [generator] * batch
            clips = [_randn((1, *shape[1:]), g, device) for g in generators]  # [1, c, f, h, w] each
            sample = torch.cat(clips)
        return sample * self.scheduler.init_noise_sigma

    def predict(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        cond: TextEncoding,
        uncond: TextEncoding | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guided network output ``[b, c, f, h, w]`` float32 at ``timestep``.

        Classifier-free guidance (Ho & Salimans 2022, Eq. 6): uncond + s * (cond - uncond), the
        two branches in one batch of 2b. Applied to whatever the network predicts (v here): it is
        linear in the prediction.
        """
        dtype = self.stunet.dtype
        model_input = self.scheduler.scale_model_input(sample, timestep)
        states, mask = cond
        if uncond is not None:
            model_input = torch.cat([model_input, model_input])  # [2b, c, f, h, w]
            states, mask = torch.cat([uncond.states, states]), torch.cat([uncond.mask, mask])
        output = self.stunet(
            model_input.to(dtype),
            timestep,
            encoder_hidden_states=states.to(dtype),
            encoder_attention_mask=mask,
        ).sample.float()
        if uncond is None:
            return output
        out_uncond, out_cond = output.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    def denoise(
        self,
        sample: torch.Tensor,
        cond: TextEncoding,
        uncond: TextEncoding | None,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None,
    ) -> torch.Tensor:
        """Run the scheduler from noise ``[b, c, f, h, w]`` to a clean sample of the same shape."""
        timesteps = self.scheduler.timesteps
        # Stochastic samplers draw noise in step(); diffusers schedulers take the generator(s)
        # as a keyword where they need them, and not all of them accept it.
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = list(generator) if isinstance(generator, tuple) else generator
        with self.progress_bar(total=len(timesteps)) as progress:
            for step, timestep in enumerate(timesteps):
                model_output = self.predict(sample, timestep, cond, uncond, guidance_scale)
                sample = self.scheduler.step(model_output, timestep, sample, **step_kwargs).prev_sample
                if callback is not None:
                    callback(step, timestep, sample)
                progress.update()
        return sample

    def postprocess(self, sample: torch.Tensor, output_type: str) -> np.ndarray | torch.Tensor | list:
        """Sample ``[b, c, f, h, w]`` in [-1, 1] -> frames ``[b, f, h, w, 3]`` in [0, 1] of ``output_type``."""
        frames = ((sample.float() + 1) / 2).clamp(0, 1)
        frames = frames.permute(0, 2, 3, 4, 1).contiguous()  # [b, c, f, h, w] -> [b, f, h, w, c]
        if output_type == "pt":
            return frames
        array = frames.cpu().numpy()
        if output_type == "np":
            return array
        pixels = (array * 255).round().astype(np.uint8)
        return [[PIL.Image.fromarray(frame) for frame in clip] for clip in pixels]

    # ----- call -------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_frames: int = 16,
        height: int | None = None,  # default: the STUNet's sample size
        width: int | None = None,  # default: the STUNet's sample size
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,  # <= 1: no guidance (the unconditional pass is skipped)
        negative_prompt: str | list[str] | None = None,  # default: the empty prompt
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,  # a list: one per clip
        noise: torch.Tensor | None = None,  # initial noise [b, c, f, h, w] (unscaled); overrides generator
        output_type: str = "np",  # "np", "pt" or "pil"
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,  # (step, timestep, sample)
        return_dict: bool = True,
    ) -> LumierePipelineOutput | tuple:
        """Generate ``len(prompt) * num_videos_per_prompt`` clips of ``num_frames`` frames.

        Returns ``LumierePipelineOutput(frames)`` (``[b, f, h, w, 3]`` in [0, 1]), or ``(frames,)``
        when ``return_dict`` is False. Same generator seeds give the same clips, whatever else is
        in the batch (up to float rounding).
        """
        # 0. Defaults and input checks.
        default_height, default_width = _sample_size(self.stunet)
        height = default_height if height is None else height
        width = default_width if width is None else width
        prompts = self.check_inputs(
            prompt,
            num_frames,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            negative_prompt,
            num_videos_per_prompt,
            generator,
            output_type,
        )
        if self.stunet.in_channels != self.stunet.out_channels:
            raise ValueError(
                f"this STUNet takes {self.stunet.in_channels - self.stunet.out_channels} conditioning "
                "channels (image / mask / video conditioning), which text-to-video sampling does not supply"
            )
        device = self._execution_device
        do_guidance = guidance_scale > 1.0
        num_clips = len(prompts) * num_videos_per_prompt

        # 1. Text states per clip: conditional and (with guidance) unconditional.
        cond, uncond = self.encode_prompt(
            prompts, negative_prompt, num_videos_per_prompt, do_guidance, device
        )

        # 2. Timesteps.
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 3. Initial noise [b, c, f, h, w].
        shape = (num_clips, self.stunet.out_channels, num_frames, height, width)
        sample = self.prepare_noise(shape, generator, noise, device)

        # 4. Denoising loop over the whole clip at once (the base model sees every frame).
        sample = self.denoise(sample, cond, uncond, guidance_scale, generator, callback)

        # 5. Frames.
        frames = self.postprocess(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return LumierePipelineOutput(frames=frames)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise drawn on the generator's device (CPU by default), moved to ``device``.

    Drawing on the generator's device makes CPU-seeded clips identical on every accelerator.
    """
    draw_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=draw_device).to(device)


def _sample_size(stunet: STUNet) -> tuple[int, int]:
    """(height, width) the STUNet was built for: its image model's ``sample_size``."""
    size = stunet.config.unet_config.get("sample_size")
    if size is None:
        raise ValueError("the stunet's config has no sample_size; pass height and width")
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _text_width(stunet: STUNet) -> int | None:
    """Width of the text states the STUNet takes (None when it varies by block)."""
    config = stunet.config.unet_config
    width = config.get("encoder_hid_dim") or config.get("cross_attention_dim")
    return width if isinstance(width, int) else None


def _load_scheduler(directory: Path) -> SchedulerMixin:
    """A diffusers scheduler from ``scheduler_config.json``; the class must be a diffusers scheduler."""
    config_path = directory / SchedulerMixin.config_name
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    config = json.loads(config_path.read_text())
    class_name = config.get("_class_name")
    scheduler_cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise ValueError(f"{config_path}: _class_name={class_name!r} is not a diffusers scheduler class")
    return scheduler_cls.from_config(config)
