"""Text-to-video sampling with a STUNet: ``LumierePipeline`` (Bar-Tal et al. 2024, Sec. 3).

prompt -> text encoder -> base STUNet denoising the whole clip at once (any diffusers scheduler,
classifier-free guidance here, not in the network) -> spatial super-resolution (SSR) with
MultiDiffusion over temporal windows (Sec. 3.2), when an SSR model is present -> frames
``[b, f, h, w, 3]`` in [0, 1].

Conditioning (Sec. 4): with a conditional base STUNet (``lumiere.models.conditional``) the same
call does image-to-video, inpainting and cinemagraphs (``image=``, ``video=``, ``mask=``); any
model does video-to-video by SDEdit (``video=``, ``strength=``). Stylised generation blends a
style fine-tune into the weights first (``lumiere.models.blend.blend_weights``).

Windows (``lumiere.pipelines.multidiffusion``): at every denoising step the clip is split into
overlapping temporal windows, the network predicts each, overlapping frames are averaged, and the
scheduler takes one step on the result. The SSR model always runs this way (memory of one window,
any length). The base model can too (``window=``), to make clips longer than it was trained on;
but windows only see each other where they overlap, so motion and appearance are coherent within
a window and merely continuous across windows: a long clip drifts (e.g. a shape may change colour
or direction between distant windows). The paper's point is the opposite (one pass over the whole
clip); use base windows only beyond the training length.

Axis legend:
    b  clips (prompts x videos per prompt)      c  channels
    f  frames      h, w  height, width          L  text tokens, d  text width
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
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
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from lumiere.errors import InvalidArgument
from lumiere.models.conditional import MaskCondition, is_conditional_stunet
from lumiere.models.shared_weights import load_beyond_base, save_beyond_base, stores_beyond_base
from lumiere.models.ssr import (
    SAMPLING_NOISE_LEVEL,
    SSRCondition,
    check_ssr_stunet,
    check_upsample_mode,
    make_condition,
    noise_level_kwargs,
    ssr_model_input,
    upsample_video,
)
from lumiere.models.stunet import DeepFeatureCache, STUNet
from lumiere.models.text import NULL_PROMPT, TextEncoder, TextEncoding, load_text_encoder
from lumiere.models.vae import (
    DEFAULT_VAE_BATCH_SIZE,
    check_vae_batch_size,
    decode_latents,
    encode_video,
    latent_channels,
    vae_scale_factor,
)
from lumiere.pipelines.conditioning import Conditioning, KnownPixels, prepare_conditioning
from lumiere.pipelines.inputs import ImageInput, MaskInput, VideoInput
from lumiere.pipelines.memory import check_sampling_memory
from lumiere.pipelines.multidiffusion import (
    DEFAULT_OVERLAP,
    check_window,
    multidiffusion_predict,
    temporal_windows,
)
from lumiere.pipelines.offload import MemoryOptionsMixin
from lumiere.pipelines.speed import DeepCaches, check_cache_interval, check_guidance_end, guided_step_count

logger = logging.getLogger(__name__)

# The default model, trained by us on moving shapes, ships inside the package (a later issue).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
MODEL_INDEX = "model_index.json"  # DiffusionPipeline.config_name
OUTPUT_TYPES = ("np", "pt", "pil")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")  # diffusers' variance_type of a model predicting it
SSR_WINDOW = 8  # default SSR window in frames: what the SSR model trains on (configs/recipe/12_ssr.yaml)
# How a pipeline's SSR was trained and runs by default, saved in model_index.json, with the value a
# pipeline saved before the key existed takes (LumierePipeline.__init__ checks each).
SSR_SETTINGS: dict[str, Any] = {
    "ssr_scale": 2,  # height and width factor (model.ssr_scale)
    "ssr_residual": False,  # it denoises the detail over the interpolation (model.ssr_residual)
    "ssr_latent": False,  # with a vae: it upsamples latents, not the decoded pixels
    "ssr_upsample": "bilinear",  # the interpolation of its low-res input (model.ssr_upsample)
    "ssr_residual_scale": 1.0,  # the detail's training scale (model.ssr_residual_scale)
    "ssr_steps": None,  # default denoising steps; None: the base model's
    "ssr_strength": 1.0,  # default share of the schedule from the noised interpolation; 1: from noise
    "ssr_draws": 1,  # default SSR samples averaged per clip (SSROptions.draws)
}
# Frames from which a pipeline with a ``long_stunet`` (a base model fine-tuned on long clips, issue 33)
# makes the clip with it, in one pass; model_index.json's ``long_clip_frames`` overrides it.
DEFAULT_LONG_CLIP_FRAMES = 32

# Samplers by CLI name: scheduler class and the arguments that make it that sampler.
# "trailing" spacing starts sampling at the last training timestep, i.e. from pure noise
# (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.3);
# the training DDPM config says "leading", which would start at t = 960 of 1000 with 25 steps.
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "dpm++": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", timestep_spacing="trailing")),
    "ddim": (
        DDIMScheduler,
        dict(timestep_spacing="trailing", clip_sample=False),
    ),  # no x0 clamp: the same ODE as the others
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


class LumierePipeline(MemoryOptionsMixin, DiffusionPipeline):
    """Text-to-video with Lumiere's Space-Time U-Net, and spatial super-resolution.

    Components: ``stunet`` (the base ``STUNet``; None in an upsampling-only pipeline),
    ``text_encoder`` (a ``lumiere.models.text`` ``TextEncoder``), ``scheduler`` (any diffusers
    scheduler over the training noise schedule; swap with
    ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``), and ``ssr`` (the SSR
    ``STUNet``, ``lumiere.models.ssr``; None when absent). ``ssr_scale`` (saved in
    model_index.json) is the SSR's upsampling factor; ``ssr_upsample`` (saved there too) how the
    low-res clip is interpolated to the SSR's input, "bilinear" or "bicubic"; ``ssr_residual``
    (saved there too) says the SSR denoises the detail over that upsample
    (``models.ssr.residual_over_upsample``), which sampling adds back. ``long_stunet`` (optional)
    is a base model fine-tuned on long clips (issue 33, docs/long_clips.md): a clip of at least
    ``long_clip_frames`` frames (saved in model_index.json) made in one pass is made with it
    (``base_model``), shorter ones and base windows with ``stunet``.

    Inflated image models (``lumiere.pipelines.convert``, DeepFloyd IF) run as they were trained:
    the prediction type comes from the scheduler's config; with a learned variance (its
    ``variance_type``) the networks predict 2x the clip's channels and the sampler takes the mean
    half (``sample_channels``); an SSR inflated from an image super-resolution model gets the
    augmentation level as its ``class_labels`` (``models.ssr.noise_level_kwargs``).
    """

    model_cpu_offload_seq = "text_encoder->stunet->long_stunet->ssr->vae"
    _optional_components = ["ssr", "vae", "long_stunet"]

    def __init__(
        self,
        stunet: STUNet | None,
        text_encoder: TextEncoder,
        scheduler: SchedulerMixin,
        ssr: STUNet | None = None,
        ssr_scale: int = 2,
        ssr_residual: bool = False,
        vae: AutoencoderKL | None = None,
        ssr_latent: bool = False,
        ssr_upsample: str = "bilinear",
        ssr_residual_scale: float = 1.0,
        ssr_steps: int | None = None,
        ssr_strength: float = 1.0,
        ssr_draws: int = 1,
        long_stunet: STUNet | None = None,
        long_clip_frames: int = DEFAULT_LONG_CLIP_FRAMES,
    ):
        super().__init__()
        if stunet is None and ssr is None:
            raise ValueError("a LumierePipeline needs a base stunet, an ssr model, or both; got neither")
        check_latent_space(stunet, ssr, scheduler, vae, ssr_latent)
        check_long_stunet(stunet, long_stunet, long_clip_frames)
        for name, model in (("stunet", stunet), ("ssr", ssr), ("long_stunet", long_stunet)):
            text_width = None if model is None else _text_width(model)
            if text_width is not None and text_width != text_encoder.dim:
                raise ValueError(
                    f"text_encoder gives {text_encoder.dim}-d states but the {name}'s cross-attention takes "
                    f"{text_width}-d; use an encoder of width {text_width}"
                )
        if ssr is not None:
            check_ssr_stunet(ssr, sample_channels=sample_channels(ssr, scheduler))
        if isinstance(ssr_scale, bool) or not isinstance(ssr_scale, int) or ssr_scale < 1:
            raise ValueError(
                f"ssr_scale={ssr_scale!r}: must be an integer >= 1 (the SSR's upsampling factor)"
            )
        self.register_modules(
            stunet=stunet, text_encoder=text_encoder, scheduler=scheduler, ssr=ssr, vae=vae, long_stunet=long_stunet
        )
        if not isinstance(ssr_residual, bool):
            raise ValueError(f"ssr_residual={ssr_residual!r}: must be True or False")
        check_upsample_mode(ssr_upsample)
        if isinstance(ssr_residual_scale, bool) or not ssr_residual_scale > 0:
            raise ValueError(f"ssr_residual_scale={ssr_residual_scale!r}: must be a number > 0")
        if ssr_steps is not None and (isinstance(ssr_steps, bool) or not isinstance(ssr_steps, int) or ssr_steps < 1):
            raise ValueError(f"ssr_steps={ssr_steps!r}: must be None or an integer >= 1")
        if isinstance(ssr_strength, bool) or not 0 < ssr_strength <= 1:
            raise ValueError(f"ssr_strength={ssr_strength!r}: must be in (0, 1]")
        if isinstance(ssr_draws, bool) or not isinstance(ssr_draws, int) or ssr_draws < 1:
            raise ValueError(f"ssr_draws={ssr_draws!r}: must be an integer >= 1")
        self.register_to_config(
            ssr_scale=ssr_scale,
            ssr_residual=ssr_residual,
            ssr_latent=ssr_latent,
            ssr_upsample=ssr_upsample,
            ssr_residual_scale=float(ssr_residual_scale),
            ssr_steps=ssr_steps,
            ssr_strength=float(ssr_strength),
            ssr_draws=ssr_draws,
            long_clip_frames=long_clip_frames,
        )

    @classmethod
    def from_stunet(
        cls,
        stunet: STUNet | None,
        text_encoder: TextEncoder | None = None,  # default: MiniLM (load_text_encoder(None))
        scheduler: SchedulerMixin | None = None,  # default: DPM-Solver++ over the training schedule
        ssr: STUNet | None = None,  # SSR model (lumiere.models.ssr.build_ssr_stunet), optional
        vae: AutoencoderKL | None = None,  # a latent model's autoencoder; None: pixel space
        **ssr_settings: Any,  # ssr_scale=, ssr_residual=, ... (SSR_SETTINGS: how the SSR was trained and runs)
    ) -> LumierePipeline:
        """A pipeline around a STUNet (and an SSR), with default text encoder and sampler where not given."""
        return cls(
            stunet=stunet,
            text_encoder=text_encoder if text_encoder is not None else load_text_encoder(None),
            scheduler=scheduler if scheduler is not None else make_sampling_scheduler("dpm++"),
            ssr=ssr,
            vae=vae,
            **_check_ssr_settings(ssr_settings),
        )

    def with_ssr(self, upsampler: LumierePipeline) -> LumierePipeline:
        """A new pipeline: this one's base (``stunet``, ``text_encoder``, ``scheduler``) joined to
        ``upsampler``'s SSR model, with its settings (``SSR_SETTINGS``). How an SSR trained on its own (``lumiere train`` stage ssr exports an upsampling-only pipeline) joins a base model:
        ``base.with_ssr(LumierePipeline.from_pretrained(ssr_dir)).save_pretrained(out_dir)``."""
        if upsampler.ssr is None:
            raise ValueError("upsampler has no SSR model (ssr is None); pass a pipeline with an ssr/ folder")
        if self.stunet is None:
            raise ValueError("this pipeline has no base stunet to join the SSR model to")
        return type(self)(
            self.stunet, self.text_encoder, self.scheduler, ssr=upsampler.ssr, vae=self.vae,
            long_stunet=self.long_stunet, long_clip_frames=self.long_clip_frames, **upsampler.ssr_settings(),
        )  # fmt: skip

    @property
    def long_clip_frames(self) -> int:
        """Clips of at least this many frames go to ``long_stunet`` (when the pipeline has one)."""
        return int(self.config.get("long_clip_frames", DEFAULT_LONG_CLIP_FRAMES))

    def base_model(self, num_frames: int, window: int | None = None) -> STUNet:
        """The base STUNet that makes a clip of ``num_frames``: ``long_stunet`` (a model fine-tuned on
        long clips, issue 33) for one pass over at least ``long_clip_frames`` frames that it takes (a
        multiple of its ``temporal_factor``), else ``stunet``; base windows (``window``) always use
        ``stunet``, whose training length windows are for."""
        long = getattr(self, "long_stunet", None)
        if (
            long is not None
            and window is None
            and num_frames >= self.long_clip_frames
            and num_frames % long.temporal_factor == 0
        ):
            return long
        return self.stunet

    def ssr_settings(self) -> dict[str, Any]:
        """How the SSR was trained and runs by default: every key of ``SSR_SETTINGS`` with this
        pipeline's value (saved in ``model_index.json``; a pipeline saved before a key existed: its default)."""
        return {key: self.config.get(key, default) for key, default in SSR_SETTINGS.items()}

    @property
    def ssr_scale(self) -> int:
        """Height and width factor of the SSR model (its training ``model.ssr_scale``)."""
        return int(self.config.ssr_scale)

    @property
    def ssr_residual(self) -> bool:
        """Whether the SSR denoises the high-res detail over bilinear (its training ``model.ssr_residual``)."""
        return bool(self.config.get("ssr_residual", False))

    @property
    def ssr_upsample(self) -> str:
        """How the SSR's low-res input is interpolated, "bilinear" or "bicubic" (its training
        ``model.ssr_upsample``; pipelines saved before it existed: bilinear)."""
        return str(self.config.get("ssr_upsample", "bilinear"))

    @property
    def ssr_residual_scale(self) -> float:
        """What a residual SSR's target detail was multiplied by in training (``model.ssr_residual_scale``),
        so that it has about the spread of the data the noise schedule was made for; sampling divides
        it back out. Pipelines saved before it existed: 1."""
        return float(self.config.get("ssr_residual_scale", 1.0))

    @property
    def ssr_steps(self) -> int | None:
        """The SSR's default denoising steps (``SSROptions.steps`` None takes it); None: the base model's."""
        steps = self.config.get("ssr_steps")
        return None if steps is None else int(steps)

    @property
    def ssr_strength(self) -> float:
        """The SSR's default share of the schedule (``SSROptions.strength`` None takes it); 1: from noise."""
        return float(self.config.get("ssr_strength", 1.0))

    @property
    def ssr_draws(self) -> int:
        """The SSR samples averaged per clip by default (``SSROptions.draws`` None takes it); 1: one."""
        return int(self.config.get("ssr_draws", 1))

    @property
    def ssr_latent(self) -> bool:
        """Whether the SSR upsamples the base clip's latents (before decoding) rather than its pixels."""
        return bool(self.config.get("ssr_latent", False))

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per sample along height and width: 8 for an SD-family latent pipeline, 1 in pixel space."""
        return 1 if self.vae is None else vae_scale_factor(self.vae)

    def _networks(self) -> list[STUNet]:
        return [model for model in (self.stunet, self.long_stunet, self.ssr) if model is not None]

    # ----- placement --------------------------------------------------------------------------

    def to(
        self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> LumierePipeline:
        """Move the networks to ``device``; ``dtype`` casts the STUNets only (the text encoder keeps
        its own precision; its states are cast when fed to a STUNet). ``pipe.to(torch.bfloat16)``
        works too. (diffusers' own ``to`` expects every component to be a diffusers model.)"""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if device is not None:
            self.text_encoder.to(device)
            if self.vae is not None:  # the autoencoder keeps its precision too (SDXL's overflows in fp16)
                self.vae.to(device)
        for model in self._networks():
            # Only the arguments given: diffusers warns on any dtype argument, even None.
            model.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The base STUNet's dtype (the SSR's in an upsampling-only pipeline)."""
        return self._networks()[0].dtype

    # ----- save / load ------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``stunet/``, ``text_encoder/``, ``scheduler/``, ``ssr/`` and ``vae/`` (when present)
        and ``model_index.json`` (component classes, ``ssr_scale``, ``ssr_residual``, ``ssr_latent``).
        ``long_stunet/`` holds only the tensors that differ from ``stunet``'s
        (``lumiere.models.shared_weights``: a long-clip model shares the frozen image layers).

        ``kwargs`` go to ``STUNet.save_pretrained`` (e.g. ``variant``); weights are safetensors.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("stunet", "ssr"):
            model = getattr(self, name)
            if model is not None:
                model.save_pretrained(directory / name, safe_serialization=True, **kwargs)
        if self.long_stunet is not None:  # the tensors it changed from stunet's (its frozen layers are stunet's)
            save_beyond_base(self.long_stunet, self.stunet, directory / "long_stunet", base_name="stunet")
        if self.vae is not None:
            self.vae.save_pretrained(directory / "vae", safe_serialization=True)
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
        its saved ``_class_name`` and must be a diffusers scheduler. ``ssr/`` and ``vae/`` are
        loaded when model_index.json lists them (folders saved before they existed load without).
        A latent pipeline's ``vae/`` keeps its own (fp32) precision under ``torch_dtype``.
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
        index = _read_json(directory / MODEL_INDEX)
        listed = {name: _is_listed(index.get(name)) for name in ("stunet", "long_stunet", "ssr", "vae")}
        if "stunet" not in index:  # written before the base model became optional
            listed["stunet"] = True
        required = ["text_encoder", "scheduler"] + [name for name, present in listed.items() if present]
        for sub in required:
            if not (directory / sub).is_dir():
                raise FileNotFoundError(f"{directory} has no {sub}/ folder; it is not a complete pipeline")

        models = {
            name: STUNet.from_pretrained(directory / name, torch_dtype=torch_dtype) if listed[name] else None
            for name in ("stunet", "ssr")
        }
        models["long_stunet"] = None
        if listed["long_stunet"]:  # saved as what it changed from stunet (save_pretrained), or whole
            long_dir = directory / "long_stunet"
            if stores_beyond_base(long_dir) and models["stunet"] is not None and torch_dtype is None:
                models["long_stunet"] = load_beyond_base(STUNet, long_dir, models["stunet"])
            else:  # whole, or another dtype: the shared tensors are checked against the saved base
                models["long_stunet"] = STUNet.from_pretrained(long_dir, torch_dtype=torch_dtype)
        vae = AutoencoderKL.from_pretrained(directory / "vae") if listed["vae"] else None
        text_encoder = TextEncoder.from_pretrained(directory / "text_encoder")
        scheduler = _load_scheduler(directory / "scheduler")
        pipe = cls(
            stunet=models["stunet"],
            text_encoder=text_encoder,
            scheduler=scheduler,
            ssr=models["ssr"],
            vae=vae,
            long_stunet=models["long_stunet"],
            **{key: index[key] for key in (*SSR_SETTINGS, "long_clip_frames") if key in index},
        )
        pipe.register_to_config(_name_or_path=str(directory))
        return pipe

    # ----- steps of __call__ ------------------------------------------------------------------

    def sdedit_timesteps(self, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The last ``round(strength * num_inference_steps)`` (at least 1) timesteps of the scheduler (SDEdit).

        Tells the scheduler where it starts (``set_begin_index``) so multistep solvers index right.
        """
        steps = sdedit_step_count(num_inference_steps, strength)
        start = (num_inference_steps - steps) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:]

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
        window: int | None = None,
        overlap: int | None = None,
    ) -> list[str]:
        """Raise ``InvalidArgument`` (a ``ValueError``) naming the bad argument and what it accepts;
        return the prompts. Cheap: front ends rely on it running before any work."""
        if self.stunet is None:
            raise ValueError(
                "this pipeline has no base stunet (an upsampling-only pipeline): use pipe.upsample(video, prompt)"
            )
        prompts = _check_prompts(prompt)
        for name, value in (
            ("num_frames", num_frames),
            ("height", height),
            ("width", width),
            ("num_inference_steps", num_inference_steps),
            ("num_videos_per_prompt", num_videos_per_prompt),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(name, "must be an integer", value)
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise InvalidArgument("guidance_scale", "must be a finite number >= 0", guidance_scale)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if len(negative_prompt) != len(prompts):
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries for {len(prompts)} prompts; "
                    "give one string, or one per prompt"
                )
        if window is None and overlap is not None:
            raise InvalidArgument("overlap", "applies to base windows only: give {window} too")
        factor = self.stunet.temporal_factor
        examples = f"(e.g. {factor}, {2 * factor} or {8 * factor})"
        if window is not None and window % factor:
            raise InvalidArgument(
                "window", f"must be a positive multiple of {factor} for this model {examples}", window
            )
        windowed = window is not None and window < num_frames  # else the whole clip is one pass
        if num_frames < 1 or (not windowed and num_frames % factor):
            raise InvalidArgument(
                "num_frames",
                f"must be a positive multiple of {factor} for this model {examples}, or longer than {{window}}",
                num_frames,
            )
        space = self.stunet.spatial_factor * self.vae_scale_factor  # a latent model: 8 pixels per latent
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % space:
                raise InvalidArgument(name, f"must be a positive multiple of {space} for this model", size)
        if num_inference_steps < 1:
            raise InvalidArgument("num_inference_steps", "must be >= 1", num_inference_steps)
        if guidance_scale < 0:
            raise InvalidArgument(
                "guidance_scale", "must be >= 0 (<= 1 means no guidance, ~5 is typical)", guidance_scale
            )
        if num_videos_per_prompt < 1:
            raise InvalidArgument("num_videos_per_prompt", "must be >= 1", num_videos_per_prompt)
        output_types = OUTPUT_TYPES + (("latent",) if self.vae is not None else ())
        if output_type not in output_types:
            raise ValueError(f"output_type={output_type!r}: choose one of {', '.join(output_types)}")
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
        cond = cond.map(lambda x: x.repeat_interleave(num_videos_per_prompt, dim=0))
        if not do_guidance:
            return cond, None
        if negative_prompt is None:
            negative_prompt = NULL_PROMPT
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        uncond = self.text_encoder.encode(list(negatives), device=device)
        uncond = uncond.map(lambda x: x.repeat_interleave(num_videos_per_prompt, dim=0))
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
            sample = _randn_per_clip(shape, generator, device)
        return sample * self.scheduler.init_noise_sigma

    def predict(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        cond: TextEncoding,
        uncond: TextEncoding | None,
        guidance_scale: float,
        model: STUNet | None = None,  # default: the base stunet
        condition: SSRCondition | MaskCondition | None = None,  # SSR low-res clip, or base conditioning
        windows: Sequence[slice] | None = None,  # temporal windows (MultiDiffusion); None: one pass
        chunk_size: int = 1,  # windows per network call
        caches: DeepCaches | None = None,  # DeepCache state of the denoising run; None: full calls
    ) -> torch.Tensor:
        """Guided network output ``[b, c, f, h, w]`` float32 at ``timestep``.

        Classifier-free guidance (Ho & Salimans 2022, Eq. 6): uncond + s * (cond - uncond), the
        two branches in one batch of 2b. Applied to whatever the network predicts (v here): it is
        linear in the prediction. With ``windows``, each window is predicted on its own and
        overlapping frames are averaged (MultiDiffusion, ``multidiffusion_predict``).
        """
        model = self.stunet if model is None else model
        model_input = self.scheduler.scale_model_input(sample, timestep)
        # A learned-variance model (IF) predicts twice the sample's channels: the sampler takes the mean half.
        channels = sample.shape[1]

        def model_fn(chunk: torch.Tensor, chunk_windows: Sequence[slice]) -> torch.Tensor:
            # chunk [k*b, c, w, h, w]: k windows of the b clips, window-major.
            k = len(chunk_windows)
            tile = lambda x: x.repeat(k, *([1] * (x.ndim - 1)))  # noqa: E731  [b, ...] -> [k*b, ...]
            noise_level = None
            if condition is not None:
                video = torch.cat([condition.video[:, :, window] for window in chunk_windows])
                chunk = ssr_model_input(chunk, video)  # [k*b, c + c_cond, w, h, w]
                if condition.noise_level is not None:
                    noise_level = tile(condition.noise_level)
            return self._guided_output(
                model,
                chunk,
                timestep,
                cond.map(tile),
                None if uncond is None else uncond.map(tile),
                guidance_scale,
                noise_level,
                None if caches is None else caches.cache(chunk_windows, guided=uncond is not None),
            )[:, :channels]

        if windows is None:
            return model_fn(model_input, [slice(0, sample.shape[2])])
        return multidiffusion_predict(model_fn, model_input, windows, chunk_size)

    def _guided_output(
        self,
        model: STUNet,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        cond: TextEncoding,
        uncond: TextEncoding | None,
        guidance_scale: float,
        noise_level: torch.Tensor | None,
        deep_cache: DeepFeatureCache | None = None,
    ) -> torch.Tensor:
        """One network call with classifier-free guidance: ``[b, c_in, f, h, w] -> [b, c_out, f, h, w]``."""
        dtype = model.dtype
        text = cond
        if uncond is not None:
            model_input = torch.cat([model_input, model_input])  # [2b, c, f, h, w]
            text = TextEncoding.cat([uncond, cond])
            noise_level = None if noise_level is None else torch.cat([noise_level, noise_level])
        output = model(
            model_input.to(dtype),
            timestep,
            encoder_hidden_states=text.states.to(dtype),
            encoder_attention_mask=text.mask,
            added_cond_kwargs=self._added_cond_kwargs(model, text, dtype),
            **noise_level_kwargs(model, noise_level),
            **({} if deep_cache is None else {"deep_cache": deep_cache}),
        ).sample.float()
        if uncond is None:
            return output
        out_uncond, out_cond = output.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    def _added_cond_kwargs(self, model: STUNet, text: TextEncoding, dtype: torch.dtype) -> dict | None:
        """SDXL's added conditions for a batch of text states: the pooled text embedding ``[b, p]``
        and the call's time ids ``[b, n]`` (``micro_conditioning``); None for other models."""
        if model.config.unet_config.get("addition_embed_type") != "text_time":
            return None
        time_ids = getattr(self, "_time_ids", None)
        if time_ids is None:  # an SSR-only call of an SDXL-family model: the clip's own size
            raise ValueError("SDXL time ids are not set; call the pipeline (it sets micro_conditioning)")
        batch = text.states.shape[0]
        return {
            "text_embeds": text.pooled.to(text.states.device, dtype),
            "time_ids": time_ids.to(text.states.device, dtype)[None].expand(batch, -1),
        }

    def denoise(
        self,
        sample: torch.Tensor,
        cond: TextEncoding,
        uncond: TextEncoding | None,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None,
        model: STUNet | None = None,  # default: the base stunet
        condition: SSRCondition | MaskCondition | None = None,  # SSR or base conditioning
        windows: Sequence[slice] | None = None,  # MultiDiffusion windows; None: the whole clip at once
        chunk_size: int = 1,  # windows per network call
        timesteps: torch.Tensor | None = None,  # the scheduler's steps to run; default all (SDEdit: the tail)
        known_pixels: KnownPixels | None = None,  # re-impose given pixels after every step (inpainting etc.)
        cache_interval: int = 1,  # DeepCache: a full network call every N steps, the first level only between
        guidance_end: float = 1.0,  # classifier-free guidance on this fraction of the steps, the first ones
    ) -> torch.Tensor:
        """Run the scheduler from noise ``[b, c, f, h, w]`` to a clean sample of the same shape.

        With ``windows``, every step combines the window predictions first, then takes one ordinary
        scheduler step on the whole clip: any diffusers scheduler works. With ``known_pixels``, the
        given pixels, noised to the level the sample has reached, replace the sample's there after
        every step (the replacement method of diffusers' inpainting pipelines; Lugmayr et al. 2022
        without resampling), and exactly after the last.

        Speed switches that trade quality (issue 34; ``docs/speed.md``): ``cache_interval`` > 1
        reuses the network's deep features between full calls (``DeepCaches``); ``guidance_end`` < 1
        runs the last steps on the conditional branch alone (half the network's batch).
        """
        timesteps = self.scheduler.timesteps if timesteps is None else timesteps
        caches = DeepCaches(cache_interval) if cache_interval > 1 else None
        guided_steps = guided_step_count(len(timesteps), guidance_end) if uncond is not None else 0
        # Stochastic samplers draw noise in step(); diffusers schedulers take the generator(s)
        # as a keyword where they need them, and not all of them accept it.
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = list(generator) if isinstance(generator, tuple) else generator
        with self.progress_bar(total=len(timesteps)) as progress:
            for step, timestep in enumerate(timesteps):
                if caches is not None:
                    caches.reuse = step % cache_interval != 0
                guided = step < guided_steps
                model_output = self.predict(sample, timestep, cond, uncond if guided else None, guidance_scale,
                                            model, condition, windows, chunk_size, caches)  # fmt: skip
                sample = self.scheduler.step(model_output, timestep, sample, **step_kwargs).prev_sample
                if known_pixels is not None:
                    following = timesteps[step + 1 : step + 2]  # the level the sample is now at; none: clean
                    sample = known_pixels.impose(sample, self.scheduler, following)
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

    # ----- spatial super-resolution -----------------------------------------------------------

    def check_ssr_inputs(
        self,
        num_frames: int,
        height: int,  # output (upsampled) height
        width: int,  # output (upsampled) width
        options: SSROptions,
        names: Mapping[str, str] | None = None,  # argument names as the caller spells them
    ) -> list[slice] | None:
        """Raise ``InvalidArgument`` naming the bad argument; return the SSR's temporal windows (None:
        the whole clip in one pass). A clip no longer than ``options.window`` is a single window.
        ``names`` maps ``SSROptions`` fields to the caller's arguments (default: ``ssr_window``, ...)."""
        name = {field: SSROptions.argument(field) for field in SSROptions.fields()} | dict(names or {})
        if self.ssr is None:
            raise ValueError("this pipeline has no SSR model (ssr is None); load one that has an ssr/ folder")
        space = self.ssr.spatial_factor
        for label, size in (("height", height), ("width", width)):
            if size < 1 or size % space:
                raise ValueError(
                    f"{label}={size // self.ssr_scale} upsampled x{self.ssr_scale} is {size}, which the SSR model "
                    f"cannot take: the output {label} must be a positive multiple of {space}"
                )
        chunk_size, steps, guidance_scale = options.chunk_size, options.steps, options.guidance_scale
        check_cache_interval(options.cache_interval, name["cache_interval"])
        if options.strength is not None and (isinstance(options.strength, bool) or not 0 < options.strength <= 1):
            raise InvalidArgument(
                name["strength"], "must be in (0, 1] (the share of the schedule the SSR runs; 1: from noise)",
                options.strength,
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidArgument(
                name["chunk_size"], "must be an integer >= 1 (windows per call)", chunk_size
            )
        draws = options.draws
        if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
            raise InvalidArgument(name["draws"], "must be an integer >= 1 (SSR samples averaged per clip)", draws)
        if steps < 1:
            raise InvalidArgument(name["steps"], "must be >= 1", steps)
        if guidance_scale < 0:
            raise InvalidArgument(
                name["guidance_scale"], "must be >= 0 (<= 1 means no guidance)", guidance_scale
            )
        levels, noise_level = len(_alphas_cumprod(self.scheduler)), options.noise_level
        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level < levels:
            raise InvalidArgument(
                name["noise_level"],
                f"must be an integer timestep in [0, {levels - 1}] (augmentation of the low-res clip; "
                f"default {SAMPLING_NOISE_LEVEL})",
                noise_level,
            )
        return _windows(num_frames, options.window, options.overlap, (name["window"], name["overlap"]))

    def check_ssr_memory(
        self, num_clips: int, num_frames: int, height: int, width: int, options: SSROptions
    ) -> None:
        """Refuse (``InsufficientMemoryError``) an SSR pass at output size ``height x width`` that
        cannot fit, before anything is allocated (``lumiere.pipelines.memory``)."""
        check_sampling_memory(
            self.ssr,
            num_clips,
            num_frames,
            height,
            width,
            options.guidance_scale > 1.0,
            self._execution_device,
            window=options.window,
            chunk_size=options.chunk_size,
            text_tokens=self.text_encoder.max_length,
            name="the SSR model",
        )

    def super_resolve(
        self,
        low_res: torch.Tensor,
        cond: TextEncoding,
        uncond: TextEncoding | None,
        options: SSROptions,  # None fields: the pipeline's defaults (resolve_ssr_options)
        windows: Sequence[slice] | None,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """SSR sampling (Sec. 3.2): low-res clip ``[b, 3, f, h, w]`` in [-1, 1] -> high-res
        ``[b, 3, f, H, W]``, MultiDiffusion over ``windows``.

        Draws, per clip from its generator: the initial noise, then the augmentation noise of the
        low-res clip (fixed level ``options.noise_level`` for every clip), then the initial noise of
        each further sample when ``options.draws`` > 1. Those samples share the conditioning and are
        averaged: a Monte Carlo estimate of the posterior mean, the best output in PSNR (docs/data.md:
        with one call from noise, 2 draws lift the soft bikes footage above bicubic).
        """
        device = self._execution_device
        batch, _, num_frames, height, width = low_res.shape
        size = (height * self.ssr_scale, width * self.ssr_scale)
        shape = (batch, sample_channels(self.ssr, self.scheduler), num_frames, *size)
        options = self.resolve_ssr_options(options, 25)  # defaults left open: the pipeline's

        # 1. Initial noise [b, c, f, H, W] (of the first draw).
        noise = self.prepare_noise(shape, generator, None, device)

        # 2. Conditioning: the upsampled low-res clip, noise-augmented at a fixed level.
        augmentation = _randn_per_clip((batch, low_res.shape[1], *shape[2:]), generator, device)
        levels = torch.full((batch,), options.noise_level, dtype=torch.long, device=device)
        low_res = low_res.to(device=device, dtype=torch.float32)
        condition = make_condition(
            low_res, size, levels, augmentation, _alphas_cumprod(self.scheduler), self.ssr_upsample
        )
        del augmentation
        # strength < 1: start from the interpolated clip (for a residual SSR: zero detail) noised to
        # the last ``strength`` of the schedule, as SDEdit starts from a given clip (Meng et al.
        # 2022): the SSR only diffuses the fine detail, in fewer steps, at any ``steps``.
        interpolated = None
        if options.strength < 1.0:
            interpolated = torch.zeros(shape, device=device) if self.ssr_residual else upsample_video(
                low_res, size, self.ssr_upsample)  # fmt: skip

        # 3. Denoising, window by window at every step (of the detail over the upsample, for a
        #    residual SSR); with draws > 1, again from the next initial noise, the samples averaged.
        total = None
        for draw in range(options.draws):
            if draw:
                noise = self.prepare_noise(shape, generator, None, device)
            self.scheduler.set_timesteps(options.steps, device=device)  # a fresh solver state per draw
            timesteps, sample = self.scheduler.timesteps, noise
            if interpolated is not None:
                timesteps = self.sdedit_timesteps(options.steps, options.strength)
                sample = self.scheduler.add_noise(interpolated, noise / self.scheduler.init_noise_sigma, timesteps[:1])
            sample = self.denoise(
                sample,
                cond,
                uncond,
                options.guidance_scale,
                generator,
                None,
                model=self.ssr,
                condition=condition,
                windows=windows,
                chunk_size=options.chunk_size,
                cache_interval=options.cache_interval,
                timesteps=timesteps,
            )
            total = sample if total is None else total + sample
        sample = total / options.draws
        if self.ssr_residual:
            detail = sample / self.ssr_residual_scale
            sample = detail + upsample_video(low_res.to(dtype=sample.dtype), size, self.ssr_upsample)
        return sample

    @torch.no_grad()
    def upsample(
        self,
        video: np.ndarray | torch.Tensor,  # low-res clips [b, f, h, w, 3] in [0, 1] (float) or uint8
        prompt: str | list[str],  # one prompt for every clip, or one per clip
        window: int | None = SSR_WINDOW,  # frames per temporal window; None: the whole clip in one pass
        overlap: int = DEFAULT_OVERLAP,  # frames shared by neighbouring windows (paper: 2)
        chunk_size: int = 1,  # windows per network call: more is faster on a GPU, costs memory
        num_inference_steps: int | None = None,  # None: the pipeline's ssr_steps, else 25
        guidance_scale: float = 1.0,  # the low-res clip fixes the content; <= 1 skips the unconditional pass
        negative_prompt: str | list[str] | None = None,  # default: the empty prompt
        noise_level: int = SAMPLING_NOISE_LEVEL,  # augmentation of the low-res clip (a timestep, 0: none)
        generator: torch.Generator | list[torch.Generator] | None = None,  # a list: one per clip
        output_type: str = "np",  # "np", "pt" or "pil"
        return_dict: bool = True,
        strength: float | None = None,  # share of the schedule run from the noised interpolation; None: ssr_strength
        draws: int | None = None,  # samples averaged per clip (their mean: best in PSNR); None: ssr_draws
    ) -> LumierePipelineOutput | tuple:
        """Upsample given clips ``ssr_scale`` times in height and width with the SSR model alone.

        The clip is split into overlapping temporal windows of ``window`` frames (a clip no longer
        than ``window`` is one window) and denoised with MultiDiffusion, so memory is that of
        ``chunk_size`` windows for any clip length. Returns ``LumierePipelineOutput(frames)`` with
        frames ``[b, f, h * ssr_scale, w * ssr_scale, 3]`` in [0, 1], as ``pipe(...)`` does.
        """
        # 1. Check inputs.
        low_res = _video_to_tensor(video)  # [b, 3, f, h, w] in [-1, 1]
        batch, _, num_frames, height, width = low_res.shape
        prompts = _check_prompts(prompt)
        prompts = prompts * batch if len(prompts) == 1 else prompts
        _check_per_clip(prompts, negative_prompt, generator, output_type, batch, "clips")
        options = SSROptions(window, overlap, chunk_size, num_inference_steps, guidance_scale, noise_level,
                             strength=strength, draws=draws)  # fmt: skip
        options = self.resolve_ssr_options(options, 25)
        names = {field: field for field in SSROptions.fields()} | {"steps": "num_inference_steps"}
        factor = self.vae_scale_factor if self.ssr_latent else 1  # a latent SSR works on 8x smaller latents
        if height % factor or width % factor:
            raise InvalidArgument("video", f"frames must have sides that are multiples of {factor} for this latent SSR")
        size = (height // factor * self.ssr_scale, width // factor * self.ssr_scale)
        windows = self.check_ssr_inputs(num_frames, *size, options, names=names)
        self.check_ssr_memory(batch, num_frames, *size, options)

        # 2. Text states per clip, then SSR with MultiDiffusion over time (of the clip's latents for
        #    a latent SSR, decoded after).
        cond, uncond = self.encode_prompt(
            prompts, negative_prompt, 1, guidance_scale > 1.0, self._execution_device
        )
        if self.ssr_latent:
            low_res = self.encode_clip(low_res)
        sample = self.super_resolve(low_res, cond, uncond, options, windows, generator)
        if self.ssr_latent:
            sample = self.decode_clip(sample)

        # 3. Frames.
        return self._output(sample, output_type, return_dict)

    # ----- call -------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_frames: int | None = None,  # default: the video's frame count, else 16
        height: int | None = None,  # base height; default: the STUNet's sample size (x ssr_scale after SSR)
        width: int | None = None,  # base width; default: the STUNet's sample size (x ssr_scale after SSR)
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,  # <= 1: no guidance (the unconditional pass is skipped)
        negative_prompt: str | list[str] | None = None,  # default: the empty prompt
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,  # a list: one per clip
        noise: torch.Tensor | None = None,  # initial noise [b, c, f, h, w] (unscaled); overrides generator
        output_type: str = "np",  # "np", "pt", "pil"; "latent": a latent pipeline's undecoded latents
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,  # (step, timestep, sample)
        return_dict: bool = True,
        window: int | None = None,  # base windows (MultiDiffusion) beyond the training length; None: one pass
        overlap: int | None = None,  # frames shared by base windows; default window // 2
        chunk_size: int = 1,  # base windows per network call
        upsample: bool = True,  # run the SSR model after the base model, when the pipeline has one
        ssr_options: SSROptions | None = None,  # the SSR pass (default SSROptions()); or ssr_window=, ...
        image: ImageInput | None = None,  # image-to-video (first frame), or cinemagraph with mask
        video: VideoInput | None = None,  # inpainting with mask, or video-to-video (SDEdit) without
        mask: MaskInput | None = None,  # [h, w] or [f, h, w]: 1 = region to generate / animate
        strength: float | None = None,  # SDEdit: how much of the video is re-generated, (0, 1]; default 0.6
        keep_known: bool = True,  # re-impose the given pixels (first frame, unmasked region) at every step
        vae_batch_size: int = DEFAULT_VAE_BATCH_SIZE,  # latent pipelines: frames per VAE encode/decode call
        micro_conditioning: Sequence[float] | None = None,  # SDXL time ids; default (h, w, 0, 0, h, w)
        cache_interval: int = 1,  # base model: a full network call every N steps (DeepCache); 1: always
        guidance_end: float = 1.0,  # base model: guidance on the first fraction of the steps; 1.0: all
        **ssr_kwargs: Any,  # ssr_window=, ssr_overlap=, ssr_chunk_size=, ssr_steps=, ssr_guidance_scale=, ...
    ) -> LumierePipelineOutput | tuple:
        """Generate ``len(prompt) * num_videos_per_prompt`` clips of ``num_frames`` frames.

        Conditioning (Sec. 4; ``lumiere.pipelines.conditioning``; inputs as
        ``lumiere.pipelines.inputs`` accepts them: PIL, numpy in [0, 1] or uint8, file paths):

        - nothing: text-to-video;
        - ``image``: image-to-video, the image is the first frame;
        - ``video`` + ``mask``: inpainting, ``mask`` marks the region to generate;
        - ``image`` + ``mask``: cinemagraph, the image repeated over time with ``mask`` marking the
          region to animate;
        - ``video`` alone: video-to-video by SDEdit (Meng et al. 2022): the video is noised to the
          level ``strength`` and denoised with the prompt (0: unchanged, 1: from pure noise).

        The first three need a conditional model (stage ``conditional``); SDEdit works with any.
        A mask has the generated size or that of the image / video given (resized with it).
        ``keep_known`` re-imposes the given pixels, noised to the current level, after every
        denoising step and exactly at the end (the model is trained to reproduce them; this makes
        them exact and keeps the generated part consistent with them). ``keep_known=False``
        shows the model's own reproduction.

        The base model denoises the whole clip at once (or, with ``window``, overlapping windows
        reconciled by MultiDiffusion: coherent within a window, only continuous across windows;
        see the module docstring). Then, if the pipeline has an SSR model and ``upsample`` is
        True, the SSR model upsamples it ``ssr_scale`` times with MultiDiffusion over temporal
        windows (``SSROptions``; the flat ``ssr_window=`` ... keywords build one).

        Speed switches that trade quality (``lumiere.pipelines.speed``, figures in docs/speed.md;
        their defaults change nothing): ``cache_interval`` / ``ssr_cache_interval`` (DeepCache:
        a full network call every N steps) and ``guidance_end`` (guidance on the first steps only).

        Returns ``LumierePipelineOutput(frames)`` (``[b, f, h, w, 3]`` in [0, 1]), or ``(frames,)``
        when ``return_dict`` is False. Same generator seeds give the same clips, whatever else is
        in the batch (up to float rounding). ``callback`` sees the base model's steps.
        """
        # 1. Check inputs; read the image / video / mask into the conditioning (Sec. 4).
        height, width = self._base_size(height, width)
        conditioning = prepare_conditioning(
            image, video, mask, strength, keep_known, num_frames, height, width
        )
        num_frames = conditioning.num_frames
        prompts = self.check_inputs(prompt, num_frames, height, width, num_inference_steps, guidance_scale,
                                    negative_prompt, num_videos_per_prompt, generator, output_type, window, overlap)  # fmt: skip
        base = self.base_model(num_frames, window)  # long_stunet for a long clip in one pass (issue 33)
        conditional = is_conditional_stunet(base)
        channels = sample_channels(base, self.scheduler)  # of the clip; other inputs condition it
        conditioning.check_model(conditional, base.in_channels - channels, channels)
        windows = _windows(num_frames, window, overlap)
        num_clips = len(prompts) * num_videos_per_prompt
        size = (height // self.vae_scale_factor, width // self.vae_scale_factor)  # of the sample (latents)
        ssr = self._plan_ssr(upsample and output_type != "latent", ssr_options, ssr_kwargs, num_clips,
                             num_frames, *(size if self.ssr_latent else (height, width)), num_inference_steps)  # fmt: skip
        check_sampling_memory(base, num_clips, num_frames, *size, guidance_scale > 1.0,
                              self._execution_device, window=window, chunk_size=chunk_size,
                              text_tokens=self.text_encoder.max_length)  # fmt: skip
        device = self._execution_device
        check_vae_batch_size(vae_batch_size)
        check_cache_interval(cache_interval)
        check_guidance_end(guidance_end)

        # 2. Encode the text: conditional and (with guidance) unconditional states per clip.
        cond, uncond = self.encode_prompt(
            prompts, negative_prompt, num_videos_per_prompt, guidance_scale > 1.0, device
        )
        self._time_ids = self.micro_conditioning(base, cond, height, width, micro_conditioning)

        # 3. Timesteps and initial noise [b, c, f, h, w]; SDEdit: the last `strength` of the
        #    timesteps, starting from the input video noised to the first of them. A latent
        #    pipeline works on the VAE latents of the given clip and a mask on the latent grid.
        shape = (num_clips, channels, num_frames, *size)
        pixels = conditioning  # the given clip and known-mask in pixels, for the final composite
        if self.vae is not None:
            conditioning = conditioning.to_latents(lambda clip: self.encode_clip(clip, vae_batch_size),
                                                   self.vae_scale_factor)  # fmt: skip
        timesteps, sample = self.prepare_timesteps_and_noise(shape, conditioning, num_inference_steps,
                                                             generator, noise, device)  # fmt: skip

        # 4. Conditions: the conditional model's masked clip and mask; the pixels to keep.
        condition = conditioning.model_condition(shape, device) if conditional else None
        known_pixels = None
        if conditioning.keeps_pixels:  # its noise is drawn after the initial noise, from the same generators
            known_pixels = conditioning.known_pixels(
                _randn_per_clip((num_clips, *shape[1:]), generator, device)
            )

        # 5. Sample the base clip: the whole clip at once (the base model sees every frame), or windows.
        sample = self.denoise(sample, cond, uncond, guidance_scale, generator, callback, base, condition=condition,
                              windows=windows, chunk_size=chunk_size, timesteps=timesteps,
                              known_pixels=known_pixels, cache_interval=cache_interval,
                              guidance_end=guidance_end)  # fmt: skip
        if known_pixels is not None:  # exact after the last step (also for a final step that is not 0)
            sample = known_pixels.impose(sample, self.scheduler, timesteps[:0])

        # 6. Spatial super-resolution of the base clip, window by window (Sec. 3.2), of its latents
        #    (``ssr_latent``) or of its pixels; a latent clip is decoded frame by frame in between.
        if ssr is not None and self.ssr_latent:
            sample = self.super_resolve_clip(sample, prompts, negative_prompt, num_videos_per_prompt, ssr, generator)
        if self.vae is not None and output_type != "latent":
            sample = self.decode_clip(sample, vae_batch_size)
            if pixels.keeps_pixels and not self.ssr_latent:  # the given pixels, exactly (latents are 8x coarser)
                sample = pixels.composite(sample.clamp(-1, 1))
        if ssr is not None and not self.ssr_latent:
            sample = self.super_resolve_clip(
                sample.clamp(-1, 1), prompts, negative_prompt, num_videos_per_prompt, ssr, generator
            )

        # 7. Frames [b, f, h, w, 3] in [0, 1] (or the latents).
        return self._output(sample, output_type, return_dict)

    # ----- steps of __call__ (continued) ------------------------------------------------------

    def super_resolve_clip(
        self,
        sample: torch.Tensor,  # [b, c, f, h, w] the base clip (pixels in [-1, 1], or latents)
        prompts: list[str],
        negative_prompt: str | list[str] | None,
        num_videos_per_prompt: int,
        ssr: tuple[SSROptions, list[slice] | None],  # from _plan_ssr
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """Step 6 of ``__call__``: the SSR's text states, then ``super_resolve``."""
        options, windows = ssr
        cond, uncond = self.encode_prompt(prompts, negative_prompt, num_videos_per_prompt,
                                          options.guidance_scale > 1.0, self._execution_device)  # fmt: skip
        return self.super_resolve(sample, cond, uncond, options, windows, generator)

    def encode_clip(self, clip: torch.Tensor, vae_batch_size: int = DEFAULT_VAE_BATCH_SIZE) -> torch.Tensor:
        """Clips ``[b, 3, f, h, w]`` in [-1, 1] -> the VAE's scaled latents ``[b, c, f, h/8, w/8]`` (the
        posterior's mean), ``vae_batch_size`` frames per call (``lumiere.models.vae``)."""
        return encode_video(self.vae, clip.to(self._execution_device), vae_batch_size)

    def decode_clip(self, latents: torch.Tensor, vae_batch_size: int = DEFAULT_VAE_BATCH_SIZE) -> torch.Tensor:
        """Scaled latents ``[b, c, f, h, w]`` -> clips ``[b, 3, f, 8h, 8w]`` in about [-1, 1], decoded
        ``vae_batch_size`` frames per call, so decoder memory does not grow with the clip's length."""
        return decode_latents(self.vae, latents, vae_batch_size)

    @staticmethod
    def micro_conditioning(
        stunet: STUNet, text: TextEncoding, height: int, width: int, given: Sequence[float] | None
    ) -> torch.Tensor | None:
        """SDXL's size and crop conditioning (Podell et al. 2023, Sec. 2.2) as the ``time_ids`` ``[n]``
        of an image model with a "text_time" added embedding (None for the others): ``given``, else
        (original height, width, crop top, left, target height, width) = (h, w, 0, 0, h, w); a
        5-id model (the SDXL refiner) takes (h, w, 0, 0, aesthetic score 6), as diffusers' defaults."""
        config = stunet.config.unet_config
        if config.get("addition_embed_type") != "text_time":
            if given is not None:
                raise InvalidArgument("micro_conditioning", "applies to SDXL-family models only (time ids)")
            return None
        if text.pooled is None:
            raise ValueError(
                "this STUNet takes SDXL's pooled text embedding (addition_embed_type 'text_time'); "
                "use the SDXL text encoder of its folder (both CLIP encoders)"
            )
        count = _time_id_count(config, text.pooled.shape[-1])
        default = (height, width, 0, 0, height, width) if count == 6 else (height, width, 0, 0, 6.0)
        ids = default if given is None else tuple(given)
        if len(ids) != count or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ids):
            raise InvalidArgument("micro_conditioning", f"must be {count} finite numbers for this model", given)
        return torch.tensor(ids, dtype=torch.float32)

    def _base_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) of the base clip in pixels: as given, else the STUNet's sample size (times
        the VAE's 8 for a latent pipeline, as diffusers' pipelines default)."""
        if self.stunet is None:
            raise ValueError(
                "this pipeline has no base stunet (an upsampling-only pipeline): use pipe.upsample(video, prompt)"
            )
        default_height, default_width = (side * self.vae_scale_factor for side in _sample_size(self.stunet))
        return (default_height if height is None else height), (default_width if width is None else width)

    def _plan_ssr(
        self,
        upsample: bool,
        options: SSROptions | None,
        flat: Mapping[str, Any],
        num_clips: int,
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
    ) -> tuple[SSROptions, list[slice] | None] | None:
        """The SSR pass's checked options (steps resolved) and windows; None when it does not run."""
        options = SSROptions.from_call(options, flat)
        if not (upsample and self.ssr is not None):
            # Windows that cannot tile a clip are refused even unused, as any other bad argument.
            _windows(num_frames, options.window, options.overlap, ("ssr_window", "ssr_overlap"))
            return None
        options = self.resolve_ssr_options(options, num_inference_steps)
        size = (height * self.ssr_scale, width * self.ssr_scale)
        windows = self.check_ssr_inputs(num_frames, *size, options)
        self.check_ssr_memory(num_clips, num_frames, *size, options)
        return options, windows

    def resolve_ssr_options(self, options: SSROptions, num_inference_steps: int) -> SSROptions:
        """``options`` with the defaults left open filled in: ``steps`` None -> the pipeline's
        ``ssr_steps``, else ``num_inference_steps``; ``strength`` None -> the pipeline's ``ssr_strength``;
        ``draws`` None -> the pipeline's ``ssr_draws``."""
        steps = options.steps if options.steps is not None else self.ssr_steps or num_inference_steps
        strength = options.strength if options.strength is not None else self.ssr_strength
        draws = options.draws if options.draws is not None else self.ssr_draws
        return dataclasses.replace(options, steps=steps, strength=strength, draws=draws)

    def prepare_timesteps_and_noise(
        self,
        shape: tuple[int, int, int, int, int],
        conditioning: Conditioning,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        noise: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The timesteps to run and the initial sample ``[b, c, f, h, w]``: noise, or for SDEdit
        the input video noised to the first of the last ``strength`` timesteps."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        sample = self.prepare_noise(shape, generator, noise, device)
        if conditioning.is_sdedit:
            timesteps = self.sdedit_timesteps(num_inference_steps, conditioning.strength)
            clean = conditioning.clip.to(device)[None].expand(shape)  # [b, c, f, h, w]
            sample = self.scheduler.add_noise(clean, sample / self.scheduler.init_noise_sigma, timesteps[:1])
        return timesteps, sample

    def _output(
        self, sample: torch.Tensor, output_type: str, return_dict: bool
    ) -> LumierePipelineOutput | tuple:
        """The call's result: frames of ``output_type`` (latents for "latent"), typed (or a tuple);
        model hooks freed."""
        frames = sample if output_type == "latent" else self.postprocess(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return LumierePipelineOutput(frames=frames)


# ---------------------------------------------------------------------------------------------
# Options and helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSROptions:
    """The SSR pass of ``LumierePipeline.__call__`` (Sec. 3.2): MultiDiffusion over temporal windows.

    ``pipe(prompt, ssr_options=SSROptions(window=4))``; the flat keywords ``ssr_window=``,
    ``ssr_overlap=``, ``ssr_chunk_size=``, ``ssr_steps=``, ``ssr_guidance_scale=``,
    ``ssr_noise_level=``, ``ssr_cache_interval=``, ``ssr_strength=`` and ``ssr_draws=`` build one.
    """

    window: int | None = SSR_WINDOW  # frames per temporal window; None: the whole clip at once
    overlap: int = DEFAULT_OVERLAP  # frames shared by neighbouring windows (paper: 2)
    chunk_size: int = 1  # windows per network call: more is faster on a GPU, costs memory
    steps: int | None = None  # denoising steps; None: the pipeline's ssr_steps, else the base model's num_inference_steps
    guidance_scale: float = 1.0  # the low-res clip fixes the content; <= 1 skips the unconditional pass
    noise_level: int = SAMPLING_NOISE_LEVEL  # augmentation of the base clip fed to the SSR (a timestep)
    cache_interval: int = 1  # a full network call every N steps, DeepCache in between (docs/speed.md); 1: always
    strength: float | None = None  # share of the schedule run from the noised interpolation; None: the pipeline's ssr_strength
    draws: int | None = None  # SSR samples averaged per clip (the posterior mean, best in PSNR); None: the pipeline's ssr_draws

    @staticmethod
    def fields() -> list[str]:
        return [field.name for field in dataclasses.fields(SSROptions)]

    @staticmethod
    def argument(field: str) -> str:
        """The flat keyword of ``__call__`` for a field: ``ssr_window``, ..., ``ssr_steps``."""
        return f"ssr_{field}"

    @classmethod
    def from_call(cls, options: SSROptions | None, flat: Mapping[str, Any]) -> SSROptions:
        """``options`` (default ``SSROptions()``) with the flat ``ssr_*`` keywords of a call applied;
        ``TypeError`` for any other keyword, as for an unknown argument."""
        fields = {cls.argument(field): field for field in cls.fields()}
        unknown = sorted(set(flat) - set(fields))
        if unknown:
            raise TypeError(f"LumierePipeline.__call__() got an unexpected keyword argument {unknown[0]!r}")
        options = cls() if options is None else options
        return dataclasses.replace(options, **{fields[key]: value for key, value in flat.items()})


def _check_ssr_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` if every key is one of ``SSR_SETTINGS``, else ``TypeError`` naming the first other."""
    unknown = sorted(set(settings) - set(SSR_SETTINGS))
    if unknown:
        raise TypeError(f"unexpected SSR setting {unknown[0]!r}; known: {list(SSR_SETTINGS)}")
    return dict(settings)


def _windows(
    num_frames: int, window: int | None, overlap: int | None, names: tuple[str, str] = ("window", "overlap")
) -> list[slice] | None:
    """Temporal MultiDiffusion windows of a clip (None: one pass); a clip no longer than ``window``
    is one window. ``overlap`` defaults to half the window; ``ValueError`` naming ``names``."""
    if window is None:
        return None
    overlap = window // 2 if overlap is None else overlap
    check_window(window, overlap, names=names)
    return [slice(0, num_frames)] if window >= num_frames else temporal_windows(num_frames, window, overlap)


def _check_per_clip(
    prompts: list[str],
    negative_prompt: str | list[str] | None,
    generator: torch.Generator | list[torch.Generator] | None,
    output_type: str,
    count: int,
    what: str,  # what the count counts, for the message: "clips", "prompts"
) -> None:
    """``ValueError`` unless prompts, negative prompts and generators come one each per item (or
    one for all), and ``output_type`` is known."""
    for name, value in (("prompt", prompts), ("negative_prompt", negative_prompt)):
        if value is not None and not isinstance(value, str) and len(value) != count:
            raise ValueError(
                f"{name} has {len(value)} entries for {count} {what}; give one string, or one per clip"
            )
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
    if isinstance(generator, (list, tuple)) and len(generator) != count:
        raise ValueError(
            f"generator is a list of {len(generator)}; give one generator per clip ({count}) or one"
        )


def _randn_per_clip(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    """Noise ``shape`` ``[b, ...]`` drawn clip by clip: clip i from generator i (a list), or all
    from one generator one after the other (EDM's one seed per sample: a clip does not depend on
    the rest of the batch)."""
    batch = shape[0]
    generators = generator if isinstance(generator, (list, tuple)) else [generator] * batch
    return torch.cat([_randn((1, *shape[1:]), g, device) for g in generators])


def _check_prompts(prompt: str | list[str]) -> list[str]:
    """The prompts as a list; ``ValueError`` for an empty list or an empty / non-string prompt."""
    if not isinstance(prompt, (str, list, tuple)):
        raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
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
    return prompts


def _video_to_tensor(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Clips ``[b, f, h, w, 3]`` (float in [0, 1], or uint8) -> float32 ``[b, 3, f, h, w]`` in [-1, 1]."""
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(video)
    if not isinstance(video, torch.Tensor):
        raise ValueError(
            f"video must be a numpy array or torch tensor [b, f, h, w, 3], got {type(video).__name__}"
        )
    if video.ndim != 5 or video.shape[-1] != 3 or min(video.shape[:4]) < 1:
        raise ValueError(
            f"video must be [b, f, h, w, 3] (clips of RGB frames), got shape {tuple(video.shape)}; "
            "add a batch axis for a single clip: video[None]"
        )
    if video.dtype == torch.uint8:
        video = video.float() / 255
    elif video.dtype.is_floating_point:
        video = video.float()
        if not bool(torch.isfinite(video).all()) or video.min() < 0 or video.max() > 1:
            raise ValueError("video must hold values in [0, 1] (float) or 0..255 (uint8)")
    else:
        raise ValueError(f"video must be float in [0, 1] or uint8, got dtype {video.dtype}")
    return (video * 2 - 1).permute(0, 4, 1, 2, 3).contiguous()  # [b, f, h, w, 3] -> [b, 3, f, h, w]


def _alphas_cumprod(scheduler: SchedulerMixin) -> torch.Tensor:
    """``[T]`` alpha_bar of the scheduler's (training) noise schedule: the augmentation levels."""
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ValueError(
            f"{type(scheduler).__name__} has no alphas_cumprod; use a DDPM-family diffusers scheduler"
        )
    return torch.as_tensor(table)


def sdedit_step_count(num_inference_steps: int, strength: float) -> int:
    """Denoising steps video-to-video runs: the last ``round(strength * num_inference_steps)``, at least 1."""
    return max(1, min(num_inference_steps, round(strength * num_inference_steps)))


def _read_json(path: Path) -> Any:
    """A JSON file; a corrupted one is a ``ValueError`` naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is corrupted (not valid JSON: {error})") from error


def _is_listed(entry: Any) -> bool:
    """Whether a model_index.json entry names a component (``[library, class]``, not ``[null, null]``)."""
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None


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


def has_learned_variance(scheduler_config: Mapping[str, Any]) -> bool:
    """Whether a noise schedule's model predicts a variance too (IF's ``variance_type``
    "learned_range"): its output has twice the sample's channels, mean first."""
    return scheduler_config.get("variance_type") in LEARNED_VARIANCE_TYPES


def sample_channels(stunet: STUNet, scheduler: SchedulerMixin) -> int:
    """Channels of the clip ``stunet`` denoises: its output's, or half of them for a learned-variance
    model (DeepFloyd IF: 6 = 3 mean + 3 variance), as diffusers' IF pipeline splits them."""
    if has_learned_variance(scheduler.config):
        return stunet.out_channels // 2
    return stunet.out_channels


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
    config = _read_json(config_path)
    class_name = config.get("_class_name")
    scheduler_cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise ValueError(f"{config_path}: _class_name={class_name!r} is not a diffusers scheduler class")
    return scheduler_cls.from_config(config)


def _time_id_count(unet_config: Mapping[str, Any], pooled_width: int) -> int:
    """How many time ids an SDXL-family U-Net takes: its added projection's input minus the pooled
    text width, per time id (SDXL base: (2816 - 1280) / 256 = 6; refiner: (2560 - 1280) / 256 = 5)."""
    total = unet_config["projection_class_embeddings_input_dim"]
    return (total - pooled_width) // unet_config["addition_time_embed_dim"]


def check_long_stunet(stunet: STUNet | None, long_stunet: STUNet | None, long_clip_frames: int) -> None:
    """``ValueError`` unless ``long_stunet`` can stand in for ``stunet`` on long clips: a base model
    beside it, the same inputs and outputs (channels, sample size, conditioning); and
    ``long_clip_frames`` an integer >= 2."""
    if isinstance(long_clip_frames, bool) or not isinstance(long_clip_frames, int) or long_clip_frames < 2:
        raise ValueError(f"long_clip_frames={long_clip_frames!r}: must be an integer >= 2 (frames per clip)")
    if long_stunet is None:
        return
    if stunet is None:
        raise ValueError("long_stunet needs a base stunet beside it (it makes only the long clips)")
    for what, get in (
        ("in_channels", lambda m: m.in_channels),
        ("out_channels", lambda m: m.out_channels),
        ("sample_size", lambda m: m.config.unet_config.get("sample_size")),
        ("conditioning (conditional model)", is_conditional_stunet),
    ):
        if get(stunet) != get(long_stunet):
            raise ValueError(
                f"long_stunet has {what} {get(long_stunet)!r} but stunet has {get(stunet)!r}: the long-clip "
                "model must take the same inputs as the base model (fine-tune it from that model)"
            )


def check_latent_space(
    stunet: STUNet | None,
    ssr: STUNet | None,
    scheduler: SchedulerMixin,
    vae: AutoencoderKL | None,
    ssr_latent: bool,
) -> None:
    """``ValueError`` naming the component unless the networks denoise the space they are given:
    the VAE's latent channels for the base STUNet (and a latent SSR), RGB for a pixel SSR."""
    if not isinstance(ssr_latent, bool):
        raise ValueError(f"ssr_latent={ssr_latent!r}: must be True or False")
    if vae is None:
        if ssr_latent:
            raise ValueError("ssr_latent=True needs a vae (the SSR upsamples latents); this pipeline has none")
        return
    latents = latent_channels(vae)
    spaces = [("stunet", stunet, latents), ("ssr", ssr, latents if ssr_latent else 3)]
    for name, model, expected in spaces:
        if model is not None and sample_channels(model, scheduler) != expected:
            space = f"the vae's {latents} latent channels" if expected == latents else "RGB pixels (3 channels)"
            raise ValueError(
                f"{name} denoises {sample_channels(model, scheduler)} channels but works on {space}: "
                f"its image model's out_channels must match the vae's latent_channels"
            )
