"""Memory options for big (latent) models (issue 30, item 5).

Gradient checkpointing on every STUNet step: the same gradients as without, no tensor kept for the
backward inside any block (each step keeps its inputs only), and the activation bytes kept for the
backward, counted with ``torch.autograd.graph.saved_tensors_hooks`` (not timed), fall by a stated
factor on a Stable-Diffusion-1.5-shaped layout.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from einops import rearrange
from torch.autograd.graph import saved_tensors_hooks

from lumiere.models.stunet import STUNet
from lumiere.models.text import text_encoder_for_sd_folder
from lumiere.pipelines import LumierePipeline
from lumiere.testing import make_tiny_sd_folder
from lumiere.testing.tiny_sd import SDXL_POOLED, make_scheduler, unet_config

# runwayml/stable-diffusion-v1-5 unet/config.json: its 4 levels, 2 layers each, cross-attention on
# the first three; widths shrunk (320-640-1280-1280 published) so a CPU runs it in a second.
SD15_LAYOUT = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=32,
)
# DeepFloyd/IF-I-XL-v1.0 unet/config.json shrunk: resnets as spatial resizers, bare Attention.
IF_LAYOUT = dict(
    sample_size=16,
    in_channels=3,
    out_channels=6,
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=32,
    encoder_hid_dim=32,
    addition_embed_type="text",
    addition_embed_type_num_heads=2,
    cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
)
# What checkpointing must save at least, as a factor of the plain backward's activation bytes, on
# SD15_LAYOUT at 8 frames of 16x16 latents: measured 32.0x (31.9x at 32x32, where it was 15.9x
# before the resizers and the output head were checkpointed).
MIN_SAVING = 25.0


def _stunet(config: dict) -> STUNet:
    """An inflated STUNet with every weight non-trivial (inflation zero-inits the inserted outputs)."""
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(UNet2DConditionModel(**config))
    with torch.no_grad():
        for parameter in stunet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return stunet


def _inputs(stunet: STUNet, frames: int, size: int, batch: int = 1) -> dict:
    """A noisy clip ``[b, c, f, size, size]``, timesteps and the text (and added) conditions."""
    generator = torch.Generator().manual_seed(1)
    config = stunet.image_config
    inputs = dict(
        sample=torch.randn(batch, config.in_channels, frames, size, size, generator=generator),
        timestep=torch.tensor([500, 20][:batch]),
        encoder_hidden_states=torch.randn(
            batch, 7, config.encoder_hid_dim or config.cross_attention_dim, generator=generator
        ),  # fmt: skip
    )
    if config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, SDXL_POOLED, generator=generator),
            time_ids=torch.randn(batch, 6, generator=generator),
        )
    return inputs


def _loss(stunet: STUNet, inputs: dict) -> torch.Tensor:
    return stunet(**inputs).sample.square().mean()


def saved_activation_bytes(stunet: STUNet, inputs: dict) -> int:
    """Bytes of the distinct tensors (storages) autograd keeps for the backward of one training
    forward, weights excluded. Non-reentrant checkpointing keeps a step's inputs through the
    same hooks (``_NoopSaveInputs``), so they are counted."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in stunet.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(stunet, inputs)
    loss.backward()
    stunet.zero_grad(set_to_none=True)
    return sum(kept.values())


@pytest.mark.parametrize("layout", ["sd15", "sdxl", "if"])
def test_checkpointing_gives_the_same_gradients(layout):
    config = {"sd15": SD15_LAYOUT, "sdxl": unet_config("sdxl", 8), "if": IF_LAYOUT}[layout]
    stunet = _stunet(config)
    inputs = _inputs(stunet, frames=8, size=16, batch=2)

    def gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stunet.zero_grad(set_to_none=True)
        loss = _loss(stunet, inputs)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in stunet.named_parameters()}

    plain_loss, plain = gradients()
    stunet.enable_gradient_checkpointing()
    assert stunet.is_gradient_checkpointing
    checkpointed_loss, checkpointed = gradients()
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=0, atol=0)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_keeps_no_tensor_inside_any_block():
    """With checkpointing on, everything a block keeps for the backward is kept by the block
    itself (the inputs of its checkpointed steps), nothing by a layer inside it: every layer,
    resizer and inserted temporal module of every level runs under a checkpoint."""
    stunet = _stunet(SD15_LAYOUT)
    stunet.enable_gradient_checkpointing()
    names = {module: name for name, module in stunet.named_modules()}
    blocks = {module for module in (*stunet.down_blocks, stunet.mid_block, *stunet.up_blocks)}
    stack: list[torch.nn.Module] = []
    inside: set[str] = set()

    def enter(module, args):
        stack.append(module)

    def leave(module, args, output):
        stack.pop()

    def pack(tensor):
        # the innermost module at the time of the save is a block's descendant, not the block
        if any(module in blocks for module in stack) and stack[-1] not in blocks:
            inside.add(names[stack[-1]])
        return tensor

    handles = [hook for module in stunet.modules()
               for hook in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))]  # fmt: skip
    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(stunet, _inputs(stunet, frames=8, size=16))
    for handle in handles:
        handle.remove()
    loss.backward()
    assert not inside, f"kept for the backward inside checkpointed blocks: {sorted(inside)}"


def test_checkpointing_cuts_the_kept_activation_bytes():
    stunet = _stunet(SD15_LAYOUT)
    inputs = _inputs(stunet, frames=8, size=16)
    plain = saved_activation_bytes(stunet, inputs)
    stunet.enable_gradient_checkpointing()
    checkpointed = saved_activation_bytes(stunet, inputs)
    assert plain / checkpointed >= MIN_SAVING, (
        f"checkpointing keeps {checkpointed / 2**20:.1f} MiB of {plain / 2**20:.1f} MiB "
        f"({plain / checkpointed:.1f}x less; at least {MIN_SAVING}x expected)"
    )
    stunet.disable_gradient_checkpointing()
    assert not stunet.is_gradient_checkpointing
    assert saved_activation_bytes(stunet, inputs) == plain


def test_checkpointing_recomputes_each_transformer_block_once():
    """The image model's Transformer2DModels are not checkpointed a second time inside the
    STUNet's checkpointed layers: each transformer block runs twice per training step, not 3x."""
    stunet = _stunet(SD15_LAYOUT)
    inputs = _inputs(stunet, frames=8, size=16)
    calls = []
    for module in stunet.modules():
        if isinstance(module, BasicTransformerBlock):
            module.register_forward_pre_hook(lambda module, args: calls.append(module))

    def count() -> int:
        calls.clear()
        _loss(stunet, inputs).backward()
        return len(calls)

    plain = count()
    stunet.enable_gradient_checkpointing()
    assert plain > 0
    assert count() == 2 * plain


# ---- offload and VAE options for generation (lumiere.pipelines.offload) ---------------------------
#
# This machine has no accelerator: the hooks run with device="cpu", so accelerate does all its
# work (weights on "meta" and streamed in for sequential offload, moved whole for model offload)
# without a device to move to. Peak memory per option on an H200: bench/latent_memory_gpu.py.

FRAMES, SIZE = 4, 64  # pixels; latents 8x8


def _latent_pipeline(folder) -> LumierePipeline:
    """The tiny SD folder's U-Net inflated, with its CLIP text encoder(s), VAE and scheduler."""
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(UNet2DConditionModel.from_pretrained(folder / "unet"))
    return LumierePipeline(
        stunet,
        text_encoder_for_sd_folder(folder),
        make_scheduler("sd1"),
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
    )


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def latent_pipeline(request, tmp_path_factory):
    folder = make_tiny_sd_folder(tmp_path_factory.mktemp(request.param), request.param)
    return _latent_pipeline(folder)


def _clip(pipe: LumierePipeline, callback=None) -> torch.Tensor:
    """A clip [1, f, h, w, 3] with guidance (2 text encodings), prompts encoded afresh."""
    pipe.text_encoder.clear_cache()
    return pipe(
        "a red circle",
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback=callback,
    ).frames


def test_offload_gives_the_same_clip(latent_pipeline):
    pipe = latent_pipeline
    plain = _clip(pipe)
    text_models = [
        child for child in pipe.text_encoder.children() if next(child.parameters(), None) is not None
    ]

    pipe.enable_model_cpu_offload(device="cpu")
    # chained in model_cpu_offload_seq order, the text encoder by the model(s) it runs
    assert [hook.model for hook in pipe._all_hooks] == [*text_models, pipe.stunet, pipe.vae]
    assert pipe._execution_device == torch.device("cpu")
    assert torch.equal(_clip(pipe), plain)
    assert len(pipe._all_hooks) == 2 + len(text_models)  # re-armed at the end of the call

    pipe.enable_sequential_cpu_offload(device="cpu")
    for network in (*text_models, pipe.stunet, pipe.vae):
        assert {p.device.type for p in network.parameters()} == {"meta"}  # streamed in per layer
    assert torch.equal(_clip(pipe), plain)

    pipe.disable_cpu_offload()
    for network in (pipe.text_encoder, pipe.stunet, pipe.vae):
        assert {p.device.type for p in network.parameters()} == {"cpu"}
    assert torch.equal(_clip(pipe), plain)


def test_vae_slicing_and_tiling_give_the_same_clip(tmp_path):
    pipe = _latent_pipeline(make_tiny_sd_folder(tmp_path, "sd1"))
    plain = _clip(pipe)
    pipe.enable_vae_slicing()
    assert pipe.vae.use_slicing
    torch.testing.assert_close(_clip(pipe), plain, rtol=1e-5, atol=1e-5)
    pipe.disable_vae_slicing()

    pipe.enable_vae_tiling(tile_size=SIZE)  # frames of one tile: decoded in one pass
    assert pipe.vae.use_tiling
    torch.testing.assert_close(_clip(pipe), plain, rtol=0, atol=0)
    # 2x2 overlapping tiles: what AutoencoderKL's tiled decode gives for each frame
    pipe.enable_vae_tiling(tile_size=SIZE // 2)
    assert pipe.vae.tile_latent_min_size == SIZE // 16
    steps = []
    tiled = _clip(pipe, callback=lambda step, timestep, sample: steps.append(sample))
    assert not torch.equal(tiled, plain)  # tiles are decoded apart and blended
    frames = rearrange(steps[-1] / pipe.vae.config.scaling_factor, "b c f h w -> (b f) c h w")
    with torch.no_grad():
        expected = rearrange(pipe.vae.tiled_decode(frames).sample, "(b f) c h w -> b f h w c", b=1)
    torch.testing.assert_close(tiled, ((expected + 1) / 2).clamp(0, 1), rtol=1e-5, atol=1e-5)
    pipe.disable_vae_tiling()
    assert torch.equal(_clip(pipe), plain)


def test_memory_options_refuse_what_does_not_apply(tmp_path):
    pipe = _latent_pipeline(make_tiny_sd_folder(tmp_path, "sd1"))
    with pytest.raises(ValueError, match="tile_size=12"):
        pipe.enable_vae_tiling(tile_size=12)
    with pytest.raises(ValueError, match="gpu_id=1"):
        pipe.enable_model_cpu_offload(gpu_id=1, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="accelerator"):
            pipe.enable_sequential_cpu_offload()
    pixel = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler)
    with pytest.raises(ValueError, match="no vae"):
        pixel.enable_vae_tiling()
