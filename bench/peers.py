"""The models the benchmarks compare, behind one call: ``model(video, timestep, text) -> video``.

- ``stunet``: lumiere's Space-Time U-Net, inflated from a preset image U-Net (``lumiere.models.presets``).
- ``unet3d``: diffusers ``UNet3DConditionModel`` (ModelScope text-to-video's architecture: temporal
  convs and temporal attention at every level, frames never compressed), with the preset's block
  layout and its widths scaled so its parameter count is the nearest to the STUNet's.
- ``lucidrains``: lucidrains' ``lumiere-pytorch`` 0.0.24, which inflates a 2-D U-Net by forward
  hooks, wrapped around the same preset image U-Net as the STUNet, with its temporal modules hooked
  where the STUNet has its own (after every down/up resnet, two attention layers after the mid
  block, temporal resizing after each spatial resizer). Same image model, different inflation.
- ``lucidrains_karras``: the same package set up as its README does, around
  ``denoising_diffusion_pytorch.KarrasUnet`` (no text conditioning: the text is ignored), its
  width chosen to match the STUNet's parameter count.
- ``animatediff``: diffusers' ``UNetMotionModel`` (AnimateDiff), made by
  ``UNetMotionModel.from_unet2d`` from the same preset image U-Net as the STUNet and a
  ``MotionAdapter`` sized to it (its widths and layers per block, diffusers' default motion
  modules: one temporal transformer of 8 heads after every resnet/attention pair and in the mid
  block, frames never compressed). Same image model, AnimateDiff's inflation.
- ``per_frame``: the preset image U-Net itself on every frame (frames folded into the batch), no
  temporal layers: the lower bound of cost for the STUNet's spatial layers.

Axis legend (einops):
    b  batch    c  channels    f  frames    h, w  height, width    n  text tokens    d  text width
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel
from einops import rearrange
from torch import nn

from lumiere.models.presets import STUNET_PRESETS, TEXT_DIM, build_unet2d, unet2d_config
from lumiere.models.stunet import STUNet

TEXT_TOKENS = 16  # text states per clip in every benchmark (MiniLM pads short captions to about this)


# ---------------------------------------------------------------------------------------------
# One interface for every model.
# ---------------------------------------------------------------------------------------------


class VideoDenoiser(nn.Module):
    """``forward(video [b, c, f, h, w], timestep [b], text [b, n, d]) -> [b, c, f, h, w]``.

    ``net`` is the wrapped network; ``temporal`` says whether it has temporal layers (the
    per-frame model has none); ``frame_multiple``: frame counts must be multiples of it.
    """

    temporal = True
    frame_multiple = 1

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class STUNetDenoiser(VideoDenoiser):
    def __init__(self, net: STUNet):
        super().__init__(net)
        self.frame_multiple = net.temporal_factor

    def forward(self, video: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.net(video, timestep, text).sample


class UNet3DDenoiser(VideoDenoiser):
    """diffusers' UNet3DConditionModel takes ``[b, c, f, h, w]`` and repeats text per frame itself."""

    def forward(self, video: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.net(video, timestep, text).sample


class MotionDenoiser(VideoDenoiser):
    """diffusers' UNetMotionModel takes ``[b, c, f, h, w]`` but text states per frame ``[(b f), n, d]``:
    ``AnimateDiffPipeline`` repeats them (``prompt_embeds.repeat_interleave(num_frames, dim=0)``)."""

    def forward(self, video: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        states = text.repeat_interleave(video.shape[2], dim=0)  # [(b f), n, d]
        return self.net(video, timestep, states).sample


class PerFrameDenoiser(VideoDenoiser):
    """An image U-Net on every frame: frames become batch entries, conditioning is repeated per frame."""

    temporal = False

    def forward(self, video: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        batch, _, num_frames = video.shape[:3]
        images = rearrange(video, "b c f h w -> (b f) c h w")
        timesteps = timestep.expand(batch).repeat_interleave(num_frames)  # [(b f)]
        states = text.repeat_interleave(num_frames, dim=0)  # [(b f), n, d]
        out = self.net(images, timesteps, states).sample
        return rearrange(out, "(b f) c h w -> b c f h w", b=batch)


class LucidrainsDenoiser(VideoDenoiser):
    """lumiere-pytorch's ``Lumiere`` takes the video and passes ``time=`` / ``text=`` to the 2-D model;
    its forward pre-hooks repeat them per frame (and subsample them where time is compressed)."""

    def __init__(self, net: nn.Module, frame_multiple: int):
        super().__init__(net)
        self.frame_multiple = frame_multiple

    def forward(self, video: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.net(video, time=timestep.expand(video.shape[0]), text=text)


class TextImageModel(nn.Module):
    """A ``UNet2DConditionModel``'s modules, run as lumiere-pytorch needs: ``model(images, time=, text=)``.

    The forward is the image model's own (time embedding, down blocks, mid block, up blocks, head),
    but every block is called with its input as the first positional argument: lumiere-pytorch
    puts a forward pre-hook on every module that reads ``args[0]``, and diffusers'
    ``UNet2DConditionModel.forward`` calls its blocks with keywords only (the hook then fails with
    "not enough values to unpack"). ``text`` may be left out: ``Lumiere.__init__`` runs a mock pass
    with images and time only; it then gets one zero token.
    """

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(self, images: torch.Tensor, time: torch.Tensor, text: torch.Tensor | None = None):
        unet = self.unet
        if text is None:
            text = images.new_zeros(images.shape[0], 1, unet.config.cross_attention_dim)
        temb = unet.time_embedding(unet.time_proj(time.expand(images.shape[0])).to(images.dtype))
        hidden = unet.conv_in(images)
        skips = [hidden]
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, block_skips = block(hidden, temb, text)
            else:
                hidden, block_skips = block(hidden, temb)
            skips.extend(block_skips)
        hidden = unet.mid_block(hidden, temb, text)
        for block in unet.up_blocks:
            block_skips = tuple(skips[-len(block.resnets) :])
            del skips[-len(block.resnets) :]
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden, block_skips, temb, text)
            else:
                hidden = block(hidden, block_skips, temb)
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))


class KarrasImageModel(nn.Module):
    """``KarrasUnet`` with a ``text`` keyword it ignores (it has no text conditioning)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, images: torch.Tensor, time: torch.Tensor, text: torch.Tensor | None = None):
        return self.unet(images, time.float())


# ---------------------------------------------------------------------------------------------
# Builders. Each returns a VideoDenoiser for a preset and a frame size, seeded, in train mode.
# ---------------------------------------------------------------------------------------------


def build_stunet(preset: str, resolution: int) -> VideoDenoiser:
    image_model = build_unet2d(preset, sample_size=resolution)
    return STUNetDenoiser(STUNet.from_unet2d(image_model, **STUNET_PRESETS[preset]))


def build_per_frame(preset: str, resolution: int) -> VideoDenoiser:
    return PerFrameDenoiser(build_unet2d(preset, sample_size=resolution))


def parameter_count(module: nn.Module) -> int:
    """All parameters, frozen or not (``Lumiere.parameters()`` lists only its temporal ones)."""
    return sum(p.numel() for _, p in module.named_parameters())


def stunet_parameter_count(preset: str) -> int:
    with torch.device("meta"):
        return parameter_count(build_stunet(preset, 32))


def unet3d_config(image: dict, resolution: int, widths: tuple[int, ...]) -> dict:
    """A UNet3DConditionModel config: the image U-Net config's block layout, 3-D blocks, ``widths``."""
    heads = image["attention_head_dim"]  # diffusers' legacy name: the number of heads
    groups = image.get("norm_num_groups", 32)
    common = math.gcd(*widths)
    groups = max(g for g in range(1, groups + 1) if common % g == 0)  # GroupNorm groups for any width
    return dict(
        sample_size=resolution,
        in_channels=image["in_channels"],
        out_channels=image["out_channels"],
        down_block_types=tuple(name.replace("2D", "3D") for name in image["down_block_types"]),
        up_block_types=tuple(name.replace("2D", "3D") for name in image["up_block_types"]),
        block_out_channels=widths,
        layers_per_block=image["layers_per_block"],
        norm_num_groups=groups,
        attention_head_dim=heads,
        cross_attention_dim=image["cross_attention_dim"],
    )


def matched_unet3d_widths(preset: str, target: int) -> tuple[int, ...]:
    """Widths of the preset, scaled (multiples of the head count), whose UNet3D is nearest ``target``."""
    image = unet2d_config(preset)
    quantum = image["attention_head_dim"]
    best: tuple[int, tuple[int, ...]] | None = None
    for step in range(16, 49):  # scale 0.5x .. 1.5x in steps of 1/32
        widths = tuple(
            max(quantum, round(w * step / 32 / quantum) * quantum) for w in image["block_out_channels"]
        )
        with torch.device("meta"):
            count = parameter_count(UNet3DConditionModel(**unet3d_config(image, 32, widths)))
        if best is None or abs(count - target) < abs(best[0] - target):
            best = (count, widths)
    return best[1]


def build_unet3d(preset: str, resolution: int) -> VideoDenoiser:
    widths = matched_unet3d_widths(preset, stunet_parameter_count(preset))
    return UNet3DDenoiser(UNet3DConditionModel(**unet3d_config(unet2d_config(preset), resolution, widths)))


def motion_adapter_config(preset: str) -> dict:
    """A MotionAdapter for the preset's image U-Net: its widths and layers per block (which
    ``UNetMotionModel.from_unet2d`` requires to match) and its GroupNorm groups; diffusers'
    defaults for the rest (8 heads, one transformer layer per motion module, a mid-block module,
    up to 32 frames)."""
    image = unet2d_config(preset)
    return dict(
        block_out_channels=image["block_out_channels"],
        motion_layers_per_block=image["layers_per_block"],
        motion_norm_num_groups=image.get("norm_num_groups", 32),
    )


def build_animatediff(preset: str, resolution: int) -> VideoDenoiser:
    """AnimateDiff's inflation of the preset image U-Net (``UNetMotionModel.from_unet2d``)."""
    image_model = build_unet2d(preset, sample_size=resolution)
    adapter = MotionAdapter(**motion_adapter_config(preset))
    return MotionDenoiser(UNetMotionModel.from_unet2d(image_model, adapter))


def _lumiere_pytorch():
    from lumiere_pytorch import Lumiere  # the `bench` extra: pip install -e ".[bench]"

    return Lumiere


def build_lucidrains(preset: str, resolution: int) -> VideoDenoiser:
    """lumiere-pytorch around the preset image U-Net, temporal modules where the STUNet has them."""
    Lumiere = _lumiere_pytorch()
    image_model = TextImageModel(build_unet2d(preset, sample_size=resolution))
    unet = image_model.unet
    conv_names, down_names, up_names = [], [], []
    for i, block in enumerate(unet.down_blocks):
        conv_names += [f"unet.down_blocks.{i}.resnets.{j}" for j in range(len(block.resnets))]
        if block.downsamplers is not None:
            down_names.append(f"unet.down_blocks.{i}.downsamplers.0")
    for i, block in enumerate(unet.up_blocks):
        conv_names += [f"unet.up_blocks.{i}.resnets.{j}" for j in range(len(block.resnets))]
        if block.upsamplers is not None:
            up_names.append(f"unet.up_blocks.{i}.upsamplers.0")
    net = Lumiere(
        image_model,
        image_size=resolution,
        unet_time_kwarg="time",
        conv_module_names=conv_names,
        attn_module_names=["unet.mid_block"],
        downsample_module_names=down_names,
        upsample_module_names=up_names,
        attn_inflation_kwargs=dict(depth=STUNET_PRESETS[preset]["temporal_attention_layers"]),
    )
    _unfreeze(net)
    return LucidrainsDenoiser(net, frame_multiple=2 ** len(down_names))


def _unfreeze(net: nn.Module) -> None:
    """lumiere-pytorch freezes the image model; the benchmarks train every weight of every model."""
    for _, param in net.named_parameters():
        param.requires_grad_(True)


def karras_unet_class() -> type[nn.Module]:
    """``denoising_diffusion_pytorch.karras_unet.KarrasUnet`` without running the package's
    ``__init__``, which imports torchvision (not installable here: it breaks ``import diffusers``).

    A bare package module pointing at the installed folder takes the place of the real one, so
    ``import denoising_diffusion_pytorch.karras_unet`` (and its ``.attend``) load on their own.
    """
    name = "denoising_diffusion_pytorch"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"{name} is not installed: pip install --no-deps denoising-diffusion-pytorch")
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = package
    return importlib.import_module(f"{name}.karras_unet").KarrasUnet


def _karras_unet(preset: str, resolution: int, dim: int) -> nn.Module:
    levels = len(unet2d_config(preset)["block_out_channels"])
    return karras_unet_class()(
        image_size=resolution,
        dim=dim,
        dim_max=dim * 2 ** (levels - 1),
        channels=3,
        num_downsamples=levels - 1,
        num_blocks_per_stage=unet2d_config(preset)["layers_per_block"],
        attn_res=(resolution // 2, resolution // 4),
        dropout=0.0,
    )


def build_lucidrains_karras(preset: str, resolution: int) -> VideoDenoiser:
    """lumiere-pytorch as its README sets it up, around a KarrasUnet whose base width makes the
    total parameter count nearest the STUNet's (built for real: Lumiere's constructor runs a
    mock forward pass to find the widths of the hooked modules, which meta tensors cannot do)."""
    target = stunet_parameter_count(preset)
    candidates = (_lucidrains_karras(preset, resolution, dim) for dim in range(8, 65, 8))
    net = min(candidates, key=lambda candidate: abs(parameter_count(candidate) - target))
    _unfreeze(net)
    return LucidrainsDenoiser(net, frame_multiple=2 ** len(net.downsamples))


def _lucidrains_karras(preset: str, resolution: int, dim: int) -> nn.Module:
    """Temporal convs after every non-resizing block above the coarsest level, temporal attention
    after the last mid block, temporal resizing after every resizing block (as the README does)."""
    Lumiere = _lumiere_pytorch()
    unet = _karras_unet(preset, resolution, dim)
    conv_names, down_names, up_names = [], [], []
    level, coarsest = 0, unet.num_downsamples
    for i, block in enumerate(unet.downs):
        if block.downsample:
            down_names.append(f"unet.downs.{i}")
            level += 1
        elif level < coarsest:
            conv_names.append(f"unet.downs.{i}")
    for i, block in enumerate(unet.ups):
        if block.upsample:
            up_names.append(f"unet.ups.{i}")
            level -= 1
        elif level < coarsest:
            conv_names.append(f"unet.ups.{i}")
    return Lumiere(
        KarrasImageModel(unet),
        image_size=resolution,
        unet_time_kwarg="time",
        conv_module_names=conv_names,
        attn_module_names=[f"unet.mids.{len(unet.mids) - 1}"],
        downsample_module_names=down_names,
        upsample_module_names=up_names,
        attn_inflation_kwargs=dict(depth=2),
    )


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    build: Callable[[str, int], VideoDenoiser]
    description: str
    temporal: bool = True  # has temporal layers (the targets compare the STUNet with these peers)


PEERS: dict[str, Peer] = {
    "stunet": Peer(build_stunet, "lumiere STUNet (this repo)"),
    "unet3d": Peer(build_unet3d, "diffusers UNet3DConditionModel, widths matched to the STUNet's count"),
    "lucidrains": Peer(build_lucidrains, "lumiere-pytorch 0.0.24 hooks on the same image U-Net"),
    "lucidrains_karras": Peer(
        build_lucidrains_karras, "lumiere-pytorch 0.0.24 on KarrasUnet (README set-up; ignores text)"
    ),
    "animatediff": Peer(
        build_animatediff, "diffusers UNetMotionModel (AnimateDiff) from the same image U-Net"
    ),
    "per_frame": Peer(
        build_per_frame, "the image U-Net per frame, no temporal layers (lower bound)", temporal=False
    ),
}
DEFAULT_MODELS = ("stunet", "unet3d", "lucidrains", "per_frame")


def build(name: str, preset: str = "default", resolution: int = 32, seed: int = 0) -> VideoDenoiser:
    """A freshly initialised model of the registry (seeded), every parameter trainable."""
    if name not in PEERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(PEERS)}")
    torch.manual_seed(seed)
    return PEERS[name].build(preset, resolution)


def text_states(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stand-in text states ``[b, n, d]`` (the networks' cost does not depend on their values)."""
    return torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=generator)
