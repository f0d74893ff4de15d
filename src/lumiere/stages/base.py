"""The ``Stage`` base class: everything ``lumiere.train`` needs to know about what it trains.

A stage owns how its network is made (from scratch, inflated, widened, loaded), its dataset, how a
batch becomes the clean sample and the conditioning, its loss (through the one training step,
``DiffusionObjective.training_loss``), its validation samples and its export. The training loop
(``lumiere.train``) only calls these methods, so a new stage is one subclass and one line in
``lumiere.stages.STAGES``.

Axis legend:
    b  clips      c  channels      f  frames      h, w  height, width
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.data import Dataset

from lumiere.diffusion import DiffusionObjective, drop_captions, make_noise_scheduler
from lumiere.models.ssr import noise_level_kwargs, ssr_model_input

if TYPE_CHECKING:
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    from lumiere.config import TrainConfig
    from lumiere.models.text import TextEncoder, TextEncoding
    from lumiere.pipelines import LumierePipeline

logger = logging.getLogger(__name__)

SHAPES_LENGTH = 2**31 - 1  # synthetic clips without data.length: every global index is a fresh clip


class Stage:
    """One training stage of lumiere, built from a ``TrainConfig``.

    Subclasses set ``name`` (the config's ``stage:``), ``image_data`` and ``needs_init_from``, and
    implement ``make_model``; they override the other methods where their stage differs.
    """

    name: ClassVar[str]  # the config's ``stage:`` value
    image_data: ClassVar[bool] = False  # trains on single frames [b, c, h, w], not clips [b, c, f, h, w]
    needs_init_from: ClassVar[bool] = True  # model.init_from is required (an image model or STUNet)
    trains_in_latent_space: ClassVar[bool] = False  # takes a latent pipeline folder (vae/) as model.init_from
    supports_lora: ClassVar[bool] = False  # takes model.lora_rank (LoRA on the spatial layers)

    def __init__(self, config: TrainConfig):
        self.config = config

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Raise ``ValueError`` naming the config key the stage cannot take (``TrainConfig`` calls this)."""
        if cls.needs_init_from and not config.model.init_from:
            raise ValueError(f"config key model.init_from is required for stage {cls.name!r}")
        if config.model.ssr_residual:
            raise ValueError(f"config key model.ssr_residual applies to stage 'ssr' only, not {cls.name!r}")
        if config.model.ssr_upsample != "bilinear" or config.model.ssr_residual_scale != 1.0:
            raise ValueError(
                f"config keys model.ssr_upsample and model.ssr_residual_scale apply to stage 'ssr' only, not {cls.name!r}"
            )
        cls.check_latent_and_lora(config)

    @classmethod
    def check_latent_and_lora(cls, config: TrainConfig) -> None:
        """``ValueError`` naming the key when the stage cannot take the latent space, caches or LoRA
        the config asks for."""
        from lumiere.stages.latent import LatentSpace, is_latent_folder

        model, data = config.model, config.data
        if model.lora_rank < 0:
            raise ValueError(f"config key model.lora_rank must be >= 0 (0: no LoRA), got {model.lora_rank}")
        if model.lora_rank and not cls.supports_lora:
            raise ValueError(f"config key model.lora_rank applies to stage 'stunet' only, not {cls.name!r}")
        if model.lora_alpha is not None and not model.lora_alpha > 0:
            raise ValueError(f"config key model.lora_alpha must be > 0 or null, got {model.lora_alpha}")
        if data.vae_batch_size < 1:
            raise ValueError(f"config key data.vae_batch_size must be >= 1, got {data.vae_batch_size}")
        latent = is_latent_folder(model.init_from)
        if latent and not cls.trains_in_latent_space:
            raise ValueError(
                f"stage {cls.name!r} does not train in latent space yet: model.init_from={model.init_from!r} "
                "is a latent pipeline folder (it has vae/); train it with stage 'stunet'"
            )
        # (A model.init_from not made yet, e.g. a smoke config's, is checked when training starts.)
        if data.cache_dir and not latent and (model.init_from is None or Path(model.init_from).exists()):
            raise ValueError(
                "config key data.cache_dir applies to latent training only: model.init_from must be a latent "
                "pipeline folder (with vae/)"
            )
        if latent and data.resolution % LatentSpace(model.init_from).scale_factor:
            factor = LatentSpace(model.init_from).scale_factor
            raise ValueError(
                f"config key data.resolution ({data.resolution}) must be a multiple of the VAE's {factor}x "
                "downsampling in latent training"
            )

    # ---- 1. the network -----------------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        """The network of the stage, initialised as the config says (seeded by ``config.seed``)."""
        torch.manual_seed(self.config.seed)
        return self.make_model()

    def make_model(self) -> torch.nn.Module:
        raise NotImplementedError

    # ---- 2. data ------------------------------------------------------------------------------

    def build_dataset(self) -> tuple[Dataset, bool]:
        """What the training loop reads, and whether it is finite: ``pixel_dataset`` here (a latent
        stage reads its caches instead when ``data.cache_dir`` is set)."""
        return self.pixel_dataset()

    def pixel_dataset(self) -> tuple[Dataset, bool]:
        """The stage's clips (styled when ``data.style`` says so), and whether the set is finite."""
        data = self.config.data
        if data.kind == "shapes":
            from lumiere.data.shapes import MovingShapes

            dataset: Dataset = MovingShapes(
                length=data.length or SHAPES_LENGTH,
                num_frames=data.num_frames,
                resolution=data.resolution,
                seed=data.seed,
                mode="image" if self.image_data else "video",
                motion_mix=data.motion_mix,
                long_share=data.long_motion_share,
                long_mix=data.long_motion_mix,
                frame_step=data.frame_step,
                source_frames=data.source_frames,
            )
            finite = data.length is not None
        elif data.kind == "photos":  # camera moves over real photographs, with shapes mixed in
            from lumiere.data.photos import PhotoClips

            if self.image_data:
                raise ValueError("config key data.kind 'photos' applies to video stages, not image stage t2i")
            dataset = PhotoClips(
                length=data.length or SHAPES_LENGTH,
                num_frames=data.num_frames,
                resolution=data.resolution,
                seed=data.seed,
                photos=data.photos,
                shapes_fraction=data.shapes_fraction,
                soft_share=data.soft_share,
            )
            finite = data.length is not None
        elif data.kind == "shards":  # streamed: batches formed by the readers (lumiere.data.streaming)
            from lumiere.data.streaming import StreamingClips

            if data.style is not None:
                raise ValueError("config key data.style applies to data.kind 'shapes' or 'folder', not 'shards'")

            # One keyword per data key (shares only its shape with the CLI's keyword calls).
            dataset = StreamingClips(
                data.path,
                batch_size=self.config.optim.batch_size,
                num_frames=1 if self.image_data else data.num_frames,
                resolution=data.resolution,
                fps=data.fps,
                seed=data.seed,
                shuffle_buffer=data.shuffle_buffer,
                short_clips=data.short_clips,
                buckets=data.buckets,
                length_buckets=None if self.image_data else data.length_buckets,
            )
            finite = False
        else:
            from lumiere.data.video_folder import VideoFolder

            frames = 1 if self.image_data else data.num_frames
            dataset = VideoFolder(
                data.path, num_frames=frames, resolution=data.resolution, fps=data.fps, seed=data.seed
            )
            finite = True
        if data.style is not None:
            from lumiere.data.styles import StyledDataset

            dataset = StyledDataset(dataset, data.style)
        return dataset, finite

    # ---- 2b. the noise schedule and the text encoder ----------------------------------------

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (``DiffusionObjective``'s): ours (cosine, v-prediction)."""
        return make_noise_scheduler()

    def sampling_scheduler(self) -> SchedulerMixin:
        """The sampler of the validation clips and of the exported pipeline, over ``noise_scheduler``."""
        from lumiere.pipelines import make_sampling_scheduler

        return make_sampling_scheduler("dpm++", self.noise_scheduler().config)

    def load_text_encoder(self) -> TextEncoder:
        """The config's ``text_encoder`` (None: MiniLM)."""
        from lumiere.models.text import load_text_encoder

        return load_text_encoder(self.config.text_encoder)

    def text_encoder_identity(self) -> str:
        """A hash of the files of the text encoder ``load_text_encoder`` gives, read without loading
        it (the text cache's key, ``lumiere.data.latent_cache``)."""
        from lumiere.data.latent_cache import files_fingerprint, text_encoder_fingerprint
        from lumiere.models.text import CONFIG_NAME, MINILM_NAMES, minilm_path

        name = self.config.text_encoder
        if name is None or str(name).lower() in MINILM_NAMES:
            return files_fingerprint([minilm_path()])
        if (Path(name) / CONFIG_NAME).is_file():
            return text_encoder_fingerprint(name)
        return files_fingerprint([name])

    # ---- 3. a batch as model input ------------------------------------------------------------

    def batch_sample(
        self, batch: dict[str, Any], generator: torch.Generator, device: torch.device | str
    ) -> torch.Tensor:
        """The batch's clean sample on ``device``: ``clean_sample`` of its clips. A latent stage
        draws it from the VAE posterior with ``generator``, the step's first draw."""
        return self.clean_sample(batch["video"]).to(device)

    def clean_sample(self, video: torch.Tensor) -> torch.Tensor:
        """The batch's clips ``[b, c, f, h, w]`` -> the stage's clean sample: images ``[b, c, h, w]``
        for an image stage, the clips themselves otherwise."""
        return video[:, :, 0] if self.image_data else video

    def diffused_sample(self, clean: torch.Tensor) -> torch.Tensor:
        """What the diffusion noises and the model learns to denoise: the clean sample itself, or
        (SSR with ``model.ssr_residual``) what is left of it over a baseline."""
        return clean

    def draw_condition(
        self, clean: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator | None
    ) -> Any:
        """The stage's conditioning beyond text for the clean sample (None: text only). Its draws
        from ``generator`` come after the step's timesteps and noise."""
        return None

    def forward(
        self,
        model: torch.nn.Module,
        noisy: torch.Tensor,  # [b, c, (f,) h, w]
        timesteps: torch.Tensor,  # [b]
        states: torch.Tensor,  # [b, n, d] text states
        mask: torch.Tensor,  # [b, n] text attention mask
        condition: Any,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,  # SDXL's pooled text and time ids
    ) -> torch.Tensor:
        """The network's prediction, the shape of ``noisy``."""
        return conditioned_forward(model, noisy, timesteps, states, mask, condition, added_cond_kwargs)

    def added_conditions(
        self, encoding: TextEncoding, batch_size: int, device: torch.device | str
    ) -> dict[str, torch.Tensor] | None:
        """What the image model embeds besides the timestep (SDXL: pooled text and time ids); none here."""
        return None

    # ---- 4. the loss --------------------------------------------------------------------------

    def training_loss(
        self,
        model: torch.nn.Module,
        objective: DiffusionObjective,
        batch: dict[str, Any],  # {"video": [b, c, f, h, w], "caption": [b] strings}
        text_encoder: TextEncoder,
        generator: torch.Generator,  # every random draw of the step
        device: torch.device | str = "cpu",
        autocast: Callable[[], AbstractContextManager] = nullcontext,  # mixed precision for the forward
    ) -> torch.Tensor:
        """The scalar loss of one batch. Draw order from ``generator`` (resume relies on it): the
        latent (latent stages: a draw from the VAE posterior), caption dropout, timesteps, noise,
        then the stage's conditioning."""
        optim = self.config.optim
        clean = self.batch_sample(batch, generator, device)
        x0 = self.diffused_sample(clean)
        captions = drop_captions(batch["caption"], optim.caption_dropout, generator=generator)
        encoding = text_encoder.encode(captions, device=device)
        states, mask = encoding
        added = self.added_conditions(encoding, len(captions), device)

        def model_fn(noisy: torch.Tensor, timesteps: torch.Tensor, condition: Any) -> torch.Tensor:
            with autocast():
                prediction = self.forward(model, noisy, timesteps, states, mask, condition, added)
            # A learned-variance model (IF: variance_type "learned_range") predicts 2x the sample's
            # channels, mean first. The mean half trains with the objective's MSE; the variance half
            # is left out of the loss (IF trains it with a variational-bound term this objective does
            # not have); our samplers read only the mean half. For other models: every channel.
            return prediction[:, : noisy.shape[1]]

        return objective.training_loss(
            model_fn,
            x0,
            generator=generator,
            min_snr_gamma=optim.min_snr_gamma,
            bias_portion=optim.timestep_bias_portion,
            bias_begin=optim.timestep_bias_begin,
            draw_cond=lambda g: self.draw_condition(clean, objective.scheduler.alphas_cumprod, g),
        )

    # ---- 5. validation samples and export -----------------------------------------------------

    def write_samples(self, model: torch.nn.Module, text_encoder: TextEncoder, path: Path, device) -> None:
        """Clips of ``config.sample_prompts`` sampled with ``model``, written as one grid video."""
        from lumiere.data.video_io import make_grid, write_video

        config = self.config
        pipe = self.pipeline(self.sampling_stunet(model), text_encoder)
        pipe.set_progress_bar_config(disable=True)
        generator = [torch.Generator().manual_seed(i) for i in range(len(config.sample_prompts))]
        clips = pipe(
            list(config.sample_prompts),
            num_frames=1 if self.image_data else config.data.num_frames,
            height=config.data.resolution,
            width=config.data.resolution,
            num_inference_steps=config.sample_steps,
            generator=generator,
        ).frames
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, make_grid(clips, nrow=min(4, len(clips))), fps=config.data.fps)

    def pipeline(self, stunet: torch.nn.Module, text_encoder: TextEncoder) -> LumierePipeline:
        """The pipeline of the validation clips and of the export around ``stunet``."""
        from lumiere.pipelines import LumierePipeline

        return LumierePipeline.from_stunet(
            stunet, text_encoder=text_encoder, scheduler=self.sampling_scheduler()
        )

    def sampling_stunet(self, model: torch.nn.Module):
        """The STUNet the pipeline samples the validation clips with."""
        return model

    def export(self, model: torch.nn.Module, text_encoder: TextEncoder, out_dir: Path) -> Path:
        """Save the trained network under ``out_dir`` atomically (``checkpoint.replace_directory``):
        a STUNet as a full pipeline, unless the stage overrides ``save``."""
        from lumiere.checkpoint import replace_directory

        return replace_directory(out_dir, lambda staging: self.save(model, text_encoder, staging))

    def save(self, model: torch.nn.Module, text_encoder: TextEncoder, directory: Path) -> None:
        # The sampler runs over the noise schedule the model was trained with (sampling_scheduler).
        self.pipeline(model, text_encoder).save_pretrained(directory)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the stages (and eval/bench)
# ---------------------------------------------------------------------------------------------


def conditioned_forward(
    model: torch.nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor,
    condition: Any,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,  # SDXL: {"text_embeds", "time_ids"}
) -> torch.Tensor:
    """The network's prediction for a noisy batch: with a condition (``SSRCondition`` or
    ``MaskCondition``), its ``video`` is concatenated along channels and its ``noise_level`` passed."""
    extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
    if condition is None:
        return model(noisy, timesteps, states, encoder_attention_mask=mask, **extra).sample
    return model(
        ssr_model_input(noisy, condition.video),
        timesteps,
        states,
        encoder_attention_mask=mask,
        **noise_level_kwargs(model, condition.noise_level),
        **extra,
    ).sample


def is_image_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a diffusers ``UNet2DConditionModel``."""
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel"


def resolve_model_dir(path: str | Path, component: str) -> Path:
    """``path`` itself, or its ``component`` subfolder when ``path`` is a saved pipeline."""
    path = Path(path)
    if (path / component / "config.json").is_file():
        return path / component
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"model.init_from={str(path)!r} holds no {component} model (no config.json)")
