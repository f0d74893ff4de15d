"""Inflating the image models people have (issue 29, Lumiere Sec. 3.1): one tiny, randomly
initialised UNet2DConditionModel per published family, its config mirroring the published layout
(block types, embedding types, attention options) with the widths scaled down.

Per family: the still-video identity against the image model (with the family's extra inputs),
per-frame equality without temporal resizing, the save/load round trip, the image model taken back
out, and a training step that moves only the temporal parameters when the spatial ones are frozen.
Then the refusal of unsupported layouts, and diffusers' attention interface on the STUNet.
"""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnAddedKVProcessor, AttnProcessor, FusedAttnProcessor2_0

from lumiere.models.inflate import extract_image_model, stunet_key
from lumiere.models.stunet import SUPPORTED_DOWN_BLOCKS, STUNet

POOLED = 16  # width of SDXL's pooled text embedding (added_cond_kwargs["text_embeds"]) here
TIME_ID_WIDTH = 8  # SDXL's addition_time_embed_dim here (256 published)

FAMILIES = {
    # runwayml/stable-diffusion-v1-5 unet/config.json: CrossAttn levels then a plain one,
    # 8 heads everywhere, conv projections.
    "sd1": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=32,
    ),
    # stabilityai/stable-diffusion-2-1 unet/config.json: linear projections and per-level head
    # counts (5, 10, 20, 20 published; diffusers' legacy name attention_head_dim).
    "sd2": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=32,
    ),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json: a plain first level, deeper
    # transformers further down ((1, 2, 10) published), added text/time embedding
    # (projection_class_embeddings_input_dim 2816 = 1280 pooled + 6 time ids x 256).
    "sdxl_base": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_ID_WIDTH,
        projection_class_embeddings_input_dim=POOLED + 6 * TIME_ID_WIDTH,
    ),
    # stabilityai/stable-diffusion-xl-refiner-1.0 unet/config.json: plain first and last levels,
    # 4 transformer layers per block, 5 time ids (2560 = 1280 + 5 x 256).
    "sdxl_refiner": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 2, 4),
        transformer_layers_per_block=2,
        use_linear_projection=True,
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_ID_WIDTH,
        projection_class_embeddings_input_dim=POOLED + 5 * TIME_ID_WIDTH,
    ),
    # DeepFloyd/IF-I-XL-v1.0 unet/config.json: pixel space, resnet resizers, attention with the
    # text as added keys/values, T5 states projected (encoder_hid_dim 4096), pooled text added to
    # the timestep embedding, scale-shift norm, learned variance (6 = 2 x 3 output channels).
    "if_1": dict(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=32,
        encoder_hid_dim=48,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    ),
    # DeepFloyd/IF-II-L-v1.0 unet/config.json: as stage I, plus the upsampled 64x64 image
    # concatenated to the input (6 = 3 noisy + 3 low-res channels), its noise level as a
    # "timestep" class embedding, per-level layer counts, GELU after the time embedding.
    "if_2": dict(
        sample_size=16,
        in_channels=6,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=(1, 2),
        attention_head_dim=8,
        cross_attention_dim=32,
        encoder_hid_dim=48,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        class_embed_type="timestep",
        mid_block_scale_factor=1.414,
        time_embedding_act_fn="gelu",
        time_embedding_dim=32,
    ),
    # SimianLuo/LCM_Dreamshaper_v7 unet/config.json: SD 1.5 distilled with the guidance scale as
    # timestep conditioning (time_cond_proj_dim 256), passed as timestep_cond.
    "lcm": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=32,
        time_cond_proj_dim=8,
    ),
    # stabilityai/stable-diffusion-x4-upscaler unet/config.json: 7 = 4 latent + 3 low-res image
    # channels, noise level as one of num_class_embeds=1000 classes, cross-attention only
    # (no self-attention) at the upper attention levels, linear projections.
    "x4_upscaler": dict(
        sample_size=16,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        only_cross_attention=(True, True, False),
        use_linear_projection=True,
        cross_attention_dim=32,
        num_class_embeds=1000,
    ),
}


def image_model(family: str) -> UNet2DConditionModel:
    """The family's tiny image model with every weight perturbed (diffusers zero-inits some)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**FAMILIES[family])
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return unet.eval()


def inputs(unet: UNet2DConditionModel, batch: int = 2) -> dict:
    """The conditioning the family's image model takes, per clip: text, plus its extra inputs."""
    config = unet.config
    text_dim = config.encoder_hid_dim or config.cross_attention_dim
    kwargs = {"encoder_hidden_states": torch.randn(batch, 7, text_dim)}
    if config.class_embed_type == "timestep":
        kwargs["class_labels"] = torch.tensor([20.0, 250.0])[:batch]  # noise level of the low-res input
    elif config.num_class_embeds:
        kwargs["class_labels"] = torch.tensor([20, 250])[:batch]
    if config.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.randn(batch, config.time_cond_proj_dim)
    if config.addition_embed_type == "text_time":
        ids = (config.projection_class_embeddings_input_dim - POOLED) // TIME_ID_WIDTH
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, POOLED),
            "time_ids": torch.tensor([16.0, 16.0, 0.0, 0.0, 16.0, 16.0][:ids]).repeat(batch, 1),
        }
    return kwargs


def per_frame(unet: UNet2DConditionModel, video: torch.Tensor, timestep: torch.Tensor, kwargs: dict):
    """Reference: the image model on every frame of ``video [b, c, f, h, w]``, each frame given its
    clip's conditioning."""
    b, c, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)

    def repeat(value):
        if isinstance(value, dict):
            return {k: repeat(v) for k, v in value.items()}
        return value.repeat_interleave(f, 0)

    out = unet(frames, timestep.repeat_interleave(f, 0), **repeat(kwargs)).sample
    return out.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)


def max_relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_still_video_gives_the_image_model_on_every_frame(family):
    """Paper's initialisation: with temporal down/up-sampling (the default), a video whose frames are
    all one image gives the image model's output for that image on every frame."""
    unet = image_model(family)
    stunet = STUNet.from_unet2d(unet).eval()
    assert stunet.temporal_factor == 2 ** (len(unet.down_blocks) - 1)
    frames = 2 * stunet.temporal_factor  # two frames at the coarsest level
    image = torch.randn(2, unet.config.in_channels, 1, 16, 16)
    video = image.expand(-1, -1, frames, -1, -1).contiguous()
    timestep = torch.tensor([10, 700])
    kwargs = inputs(unet)
    with torch.no_grad():
        out = stunet(video, timestep, **kwargs).sample
        ref = unet(image[:, :, 0], timestep, **kwargs).sample
    assert out.shape == (2, unet.config.out_channels, frames, 16, 16)
    assert max_relative_error(out, ref[:, :, None].expand_as(out)) <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_without_temporal_resizing_any_video_gives_the_image_model_per_frame(family):
    unet = image_model(family)
    stunet = STUNet.from_unet2d(unet, temporal_resizing=False).eval()
    video = torch.randn(2, unet.config.in_channels, 3, 16, 16)
    timestep = torch.tensor([10, 700])
    kwargs = inputs(unet)
    with torch.no_grad():
        out = stunet(video, timestep, **kwargs).sample
        ref = per_frame(unet, video, timestep, kwargs)
    assert max_relative_error(out, ref) <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_round_trip(tmp_path, family):
    unet = image_model(family)
    stunet = STUNet.from_unet2d(unet).eval()
    with torch.no_grad():  # non-zero temporal weights, so the round trip covers them too
        for param in stunet.temporal_parameters():
            param.add_(torch.randn_like(param) * 0.05)
    stunet.save_pretrained(tmp_path / "stunet")
    loaded = STUNet.from_pretrained(tmp_path / "stunet").eval()
    assert loaded.state_dict().keys() == stunet.state_dict().keys()
    video = torch.randn(2, unet.config.in_channels, stunet.temporal_factor, 16, 16)
    kwargs = inputs(unet)
    with torch.no_grad():
        assert torch.equal(loaded(video, 10, **kwargs).sample, stunet(video, 10, **kwargs).sample)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_image_model_taken_back_out_is_the_original(family):
    """``extract_image_model`` (used to fine-tune and blend styles, Sec. 4.1) inverts inflation."""
    unet = image_model(family)
    extracted = extract_image_model(STUNet.from_unet2d(unet)).eval()
    image = torch.randn(2, unet.config.in_channels, 16, 16)
    kwargs = inputs(unet)
    with torch.no_grad():
        assert torch.equal(extracted(image, 10, **kwargs).sample, unet(image, 10, **kwargs).sample)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_step_moves_only_temporal_parameters(family):
    unet = image_model(family)
    stunet = STUNet.from_unet2d(unet)
    stunet.freeze_spatial()
    spatial_before = [p.detach().clone() for p in stunet.spatial_parameters()]
    temporal_before = [p.detach().clone() for p in stunet.temporal_parameters()]
    optimizer = torch.optim.SGD(stunet.temporal_parameters(), lr=0.1)
    video = torch.randn(2, unet.config.in_channels, stunet.temporal_factor, 16, 16)
    prediction = stunet(video, torch.tensor([10, 700]), **inputs(unet)).sample
    (prediction - torch.randn_like(prediction)).square().mean().backward()
    optimizer.step()
    for before, param in zip(spatial_before, stunet.spatial_parameters(), strict=True):
        assert param.grad is None
        assert torch.equal(before, param)
    moved = [
        not torch.equal(b, p) for b, p in zip(temporal_before, stunet.temporal_parameters(), strict=True)
    ]
    assert any(moved)


def test_extra_inputs_are_required_as_by_the_image_model():
    """The inputs the image model needs are passed on, and missing ones are refused as it refuses them."""
    sdxl = STUNet.from_unet2d(image_model("sdxl_base")).eval()
    video = torch.randn(1, 4, sdxl.temporal_factor, 16, 16)
    with pytest.raises(ValueError, match="text_embeds"):
        sdxl(video, 10, torch.randn(1, 7, 32))
    upscaler = STUNet.from_unet2d(image_model("x4_upscaler")).eval()
    video = torch.randn(1, 7, upscaler.temporal_factor, 16, 16)
    with pytest.raises(ValueError, match="class_labels"):
        upscaler(video, 10, torch.randn(1, 7, 32))
    text = torch.randn(1, 7, 32)
    with torch.no_grad():  # the noise level changes the prediction
        low = upscaler(video, 10, text, class_labels=torch.tensor([0])).sample
        high = upscaler(video, 10, text, class_labels=torch.tensor([300])).sample
    assert not torch.allclose(low, high)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("down_block_types", ("KDownBlock2D", "DownBlock2D"), "KDownBlock2D"),
        ("down_block_types", ("AttnDownBlock2D", "DownBlock2D"), "AttnDownBlock2D"),
        ("mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D"),
        ("addition_embed_type", "image", "addition_embed_type='image'"),
    ],
)
def test_unsupported_layout_is_a_value_error_listing_the_supported_ones(key, value, named):
    config = {**FAMILIES["sd1"], key: value}
    with pytest.raises(ValueError, match=named) as error:
        STUNet(unet_config=config)
    if key == "down_block_types":
        assert all(block in str(error.value) for block in SUPPORTED_DOWN_BLOCKS)
    assert "supported" in str(error.value)


def test_attention_interface_reaches_image_and_temporal_attentions():
    """diffusers' attention interface (issue 29, part 2): processors and QKV fusion act on every
    attention of the STUNet, the image model's (under their inflated names) and the temporal ones."""
    unet = image_model("sd1")
    stunet = STUNet.from_unet2d(unet).eval()
    names = set(stunet.attn_processors)
    assert {stunet_key(name) for name in unet.attn_processors} < names
    assert any(".temporal_attentions." in name for name in names)
    video = torch.randn(2, 4, stunet.temporal_factor, 16, 16)
    kwargs = inputs(unet)
    with torch.no_grad():
        before = stunet(video, 10, **kwargs).sample
        stunet.set_attn_processor(AttnProcessor())
        assert {type(p) for p in stunet.attn_processors.values()} == {AttnProcessor}
        plain = stunet(video, 10, **kwargs).sample
        stunet.fuse_qkv_projections()
        assert {type(p) for p in stunet.attn_processors.values()} == {FusedAttnProcessor2_0}
        assert stunet.mid_block.temporal_attentions[0].attn.fused_projections
        fused = stunet(video, 10, **kwargs).sample
        stunet.unfuse_qkv_projections()
        assert {type(p) for p in stunet.attn_processors.values()} == {AttnProcessor}
    torch.testing.assert_close(plain, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, before, rtol=1e-4, atol=1e-5)
    # IF's attentions have added key/value projections: diffusers refuses to fuse them, here as there.
    with pytest.raises(ValueError, match="added KV"):
        STUNet.from_unet2d(image_model("if_1")).fuse_qkv_projections()


class TaggedProcessor:
    """Wraps a processor, recording the extra keyword it is given through cross_attention_kwargs."""

    def __init__(self, inner):
        self.inner, self.tags = inner, []

    def __call__(self, attn, hidden_states, *args, tag=None, **kwargs):
        self.tags.append(tag)
        return self.inner(attn, hidden_states, *args, **kwargs)


@pytest.mark.parametrize(("family", "inner"), [("sd1", AttnProcessor), ("if_1", AttnAddedKVProcessor)])
def test_cross_attention_kwargs_reach_the_image_attentions(family, inner):
    unet = image_model(family)
    stunet = STUNet.from_unet2d(unet, temporal_attention_layers=0).eval()
    processor = TaggedProcessor(inner())
    stunet.set_attn_processor(processor)
    video = torch.randn(1, unet.config.in_channels, stunet.temporal_factor, 16, 16)
    with torch.no_grad():
        stunet(video, 10, **inputs(unet, batch=1), cross_attention_kwargs={"tag": "seen"})
    assert len(processor.tags) == len(stunet.attn_processors)
    assert set(processor.tags) == {"seen"}
