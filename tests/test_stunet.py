"""STUNet inflation (Lumiere Sec. 3.1, App. B): identity properties, training, I/O, bad input."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from lumiere.models.inflate import stunet_key
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import (
    FactorizedSpaceTimeConv,
    STUNet,
    TemporalAttentionBlock,
    TemporalDownsample,
    TemporalUpsample,
)

TEXT = 384


def sd15_shrunk_config():
    """Stable Diffusion 1.5's UNet configuration with the widths shrunk (random weights)."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=32,
        norm_num_groups=32,
    )


def image_model_per_frame(unet2d, video, timestep, text):
    """Reference: the image model applied to every frame of ``video`` [b, c, f, h, w]."""
    b, c, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    timestep = torch.as_tensor(timestep).expand(b).repeat_interleave(f)
    out = unet2d(frames, timestep, text.repeat_interleave(f, 0)).sample
    return out.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)


def perturb(model: torch.nn.Module, scale=0.05):
    """Give a random image model non-trivial weights everywhere (diffusers zero-inits some outputs)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


@pytest.fixture
def tiny_unet():
    return perturb(build_unet2d("tiny")).eval()


def still_video(b, c, f, h, w):
    return torch.randn(b, c, 1, h, w).expand(b, c, f, h, w).contiguous()


# ---- 1. no temporal resizing: the image model frame by frame, for any video ------------------


@pytest.mark.parametrize("config", ["tiny", "sd15"])
def test_no_resizing_equals_image_model_per_frame(config):
    unet = perturb(
        UNet2DConditionModel(**sd15_shrunk_config()) if config == "sd15" else build_unet2d("tiny")
    ).eval()
    stunet = STUNet.from_unet2d(unet, temporal_resizing=False).eval()
    video = torch.randn(2, unet.config.in_channels, 5, 16, 16)
    text = torch.randn(2, 7, unet.config.cross_attention_dim)
    timestep = torch.tensor([3, 700])
    with torch.no_grad():
        out = stunet(video, timestep, text).sample
        ref = image_model_per_frame(unet, video, timestep, text)
    assert out.shape == (2, unet.config.out_channels, 5, 16, 16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ---- 2. with temporal resizing: a still video gives the image model on every frame -----------


@pytest.mark.parametrize("config", ["tiny", "sd15"])
def test_still_video_equals_image_model(config):
    unet = perturb(
        UNet2DConditionModel(**sd15_shrunk_config()) if config == "sd15" else build_unet2d("tiny")
    ).eval()
    stunet = STUNet.from_unet2d(unet, temporal_resizing=True).eval()
    frames = 8  # the SD-like layout halves time three times
    video = still_video(2, unet.config.in_channels, frames, 16, 16)
    text = torch.randn(2, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        out = stunet(video, 500, text).sample
        ref = unet(video[:, :, 0], 500, text).sample
    torch.testing.assert_close(out, ref[:, :, None].expand_as(out), rtol=1e-4, atol=1e-5)


def test_resizing_model_is_not_per_frame_on_moving_video(tiny_unet):
    """Nearest-neighbour resampling drops odd frames: on a moving video the output differs."""
    stunet = STUNet.from_unet2d(tiny_unet).eval()
    video = torch.randn(1, 3, 4, 16, 16)
    text = torch.randn(1, 5, TEXT)
    with torch.no_grad():
        out = stunet(video, 10, text).sample
        ref = image_model_per_frame(tiny_unet, video, 10, text)
    assert not torch.allclose(out, ref, atol=1e-3)


def test_modules_are_visible_and_counted(tiny_unet):
    stunet = STUNet.from_unet2d(tiny_unet, temporal_attention_layers=3)
    kinds = {type(m) for m in stunet.inserted_modules()}
    assert kinds == {FactorizedSpaceTimeConv, TemporalAttentionBlock, TemporalDownsample, TemporalUpsample}
    assert len(stunet.mid_block.temporal_attentions) == 3
    assert stunet.temporal_factor == 2 and stunet.spatial_factor == 2
    assert "TemporalAttentionBlock" in repr(stunet)
    n_image = sum(p.numel() for p in tiny_unet.parameters())
    n_spatial = sum(p.numel() for p in stunet.spatial_parameters())
    assert n_spatial == n_image


def test_per_level_temporal_resizing():
    unet = UNet2DConditionModel(**sd15_shrunk_config())
    stunet = STUNet.from_unet2d(unet, temporal_resizing=[True, False, True])
    assert stunet.temporal_factor == 4
    # the up path mirrors the down path
    ups = [b.temporal_upsampler is not None for b in stunet.up_blocks]
    assert ups == [True, False, True, False]
    video = torch.randn(1, 4, 4, 16, 16)
    with torch.no_grad():
        assert stunet(video, 1, torch.randn(1, 3, 32)).sample.shape == video.shape
    with pytest.raises(ValueError, match="temporal_resizing"):
        STUNet.from_unet2d(unet, temporal_resizing=[True, False])


def test_inflation_key_mapping(tiny_unet):
    stunet = STUNet.from_unet2d(tiny_unet)
    mapped = stunet.state_dict()
    for key, value in tiny_unet.state_dict().items():
        torch.testing.assert_close(mapped[stunet_key(key)], value)
    assert (
        stunet_key("down_blocks.1.attentions.0.proj_in.weight")
        == "down_blocks.1.spatial.attentions.0.proj_in.weight"
    )
    assert stunet_key("mid_block.resnets.0.conv1.weight") == "mid_block.spatial.resnets.0.conv1.weight"
    assert stunet_key("conv_in.weight") == "conv_in.weight"


# ---- 3. training breaks the identities, and reaches every temporal parameter ------------------


def test_training_updates_every_temporal_parameter(tiny_unet):
    torch.manual_seed(0)
    plain = STUNet.from_unet2d(tiny_unet, temporal_resizing=False)
    resizing = STUNet.from_unet2d(tiny_unet, temporal_resizing=True)
    text = torch.randn(2, 5, TEXT)
    for stunet in (plain, resizing):
        stunet.freeze_spatial()
        assert all(not p.requires_grad for p in stunet.spatial_parameters())
        optimizer = torch.optim.Adam(stunet.temporal_parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            video = torch.randn(2, 3, 4, 16, 16)
            loss = (stunet(video, 10, text).sample - video).pow(2).mean()
            loss.backward()
            optimizer.step()
        for name, param in stunet.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            else:
                assert param.grad is None, name
    plain.eval()
    resizing.eval()
    video = torch.randn(1, 3, 4, 16, 16)
    still = still_video(1, 3, 4, 16, 16)
    with torch.no_grad():
        out = plain(video, 10, text[:1]).sample
        ref = image_model_per_frame(tiny_unet, video, 10, text[:1])
        assert not torch.allclose(out, ref, atol=1e-3)
        out = resizing(still, 10, text[:1]).sample
        ref = tiny_unet(still[:, :, 0], 10, text[:1]).sample[:, :, None].expand_as(out)
        assert not torch.allclose(out, ref, atol=1e-3)


# ---- 4. save / load ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, tiny_unet):
    stunet = perturb(STUNet.from_unet2d(tiny_unet, temporal_resizing=True, noise_level_conditioning=True))
    stunet.widen_input(4)
    stunet.eval()
    stunet.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").exists()
    loaded = STUNet.from_pretrained(tmp_path / "model").eval()
    assert loaded.in_channels == 7
    video = torch.randn(1, 7, 4, 16, 16)
    text = torch.randn(1, 5, TEXT)
    with torch.no_grad():
        a = stunet(video, 10, text, noise_level=torch.tensor([50])).sample
        b = loaded(video, 10, text, noise_level=torch.tensor([50])).sample
    assert torch.equal(a, b)


# ---- 5. bad input ------------------------------------------------------------------------------


def test_bad_frame_count_names_num_frames():
    stunet = STUNet.from_unet2d(UNet2DConditionModel(**sd15_shrunk_config()))
    with pytest.raises(ValueError, match=r"num_frames=12.*multiple of 8 \(e\.g\. 8, 16, 24\)"):
        stunet(torch.randn(1, 4, 12, 16, 16), 1, torch.randn(1, 3, 32))


def test_bad_channels_and_shapes(tiny_unet):
    stunet = STUNet.from_unet2d(tiny_unet)
    text = torch.randn(1, 5, TEXT)
    with pytest.raises(ValueError, match="in_channels=3"):
        stunet(torch.randn(1, 4, 4, 16, 16), 1, text)
    with pytest.raises(ValueError, match=r"\[b, c, f, h, w\]"):
        stunet(torch.randn(1, 3, 16, 16), 1, text)
    with pytest.raises(ValueError, match="multiples of 2"):
        stunet(torch.randn(1, 3, 4, 15, 16), 1, text)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        stunet(torch.randn(2, 3, 4, 16, 16), 1, text)


def test_unsupported_image_model_is_refused():
    config = dict(build_unet2d("tiny").config)
    config["down_block_types"] = ("DownBlock2D", "AttnDownBlock2D")
    with pytest.raises(ValueError, match="AttnDownBlock2D"):
        STUNet(unet_config=config)


# ---- widen_input: the conditional variant starts as the unconditional model --------------------


def test_widen_input_starts_as_unconditional(tiny_unet):
    stunet = perturb(STUNet.from_unet2d(tiny_unet)).eval()
    video = torch.randn(1, 3, 4, 16, 16)
    text = torch.randn(1, 5, TEXT)
    with torch.no_grad():
        before = stunet(video, 10, text).sample
        stunet.widen_input(4)
        conditioning = torch.randn(1, 4, 4, 16, 16)
        after = stunet(torch.cat([video, conditioning], 1), 10, text).sample
    assert stunet.config.extra_in_channels == 4
    torch.testing.assert_close(before, after)
    with pytest.raises(ValueError, match="extra_channels"):
        stunet.widen_input(0)


# ---- 6. determinism and gradient checkpointing -----------------------------------------------------


def test_same_seed_same_output():
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        stunet = perturb(STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]))
        video = torch.randn(1, 3, 4, 16, 16)
        with torch.no_grad():
            outputs.append(stunet(video, 10, torch.randn(1, 5, TEXT)).sample)
    assert torch.equal(outputs[0], outputs[1])


def test_gradient_checkpointing_same_gradients(tiny_unet):
    stunet = perturb(STUNet.from_unet2d(tiny_unet))
    video = torch.randn(2, 3, 4, 16, 16)
    text = torch.randn(2, 5, TEXT)

    def grads():
        stunet.zero_grad()
        stunet(video, torch.tensor([5, 900]), text).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in stunet.named_parameters()}

    plain = grads()
    stunet.enable_gradient_checkpointing()
    assert stunet.down_blocks[0].gradient_checkpointing
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_text_mask_changes_the_output(tiny_unet):
    stunet = STUNet.from_unet2d(tiny_unet).eval()
    video, text = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 5, TEXT)
    mask = torch.tensor([[1, 1, 0, 0, 0]])
    with torch.no_grad():
        full = stunet(video, 10, text).sample
        masked = stunet(video, 10, text, encoder_attention_mask=mask).sample
        truncated = stunet(video, 10, text[:, :2]).sample
    assert not torch.allclose(full, masked)
    torch.testing.assert_close(masked, truncated, rtol=1e-4, atol=1e-5)


def test_temporal_attention_attends_to_text_and_frames():
    block = perturb(TemporalAttentionBlock(16, num_heads=2, norm_groups=4, text_dim=8)).eval()
    frames = 4
    video = torch.randn(2 * frames, 16, 3, 3)
    text_a = torch.randn(2, 5, 8).repeat_interleave(frames, 0)
    text_b = torch.randn(2, 5, 8).repeat_interleave(frames, 0)
    with torch.no_grad():
        out_a = block(video, frames, text_a)
        out_b = block(video, frames, text_b)
        # changing one frame changes the other frames' outputs (attention across time) ...
        moved = video.clone()
        moved[1] += torch.randn_like(moved[1])
        out_moved = block(moved, frames, text_a)
    assert not torch.allclose(out_a, out_b)
    assert not torch.allclose(out_a[0], out_moved[0])
    # ... but never another clip's
    torch.testing.assert_close(out_a[frames:], out_moved[frames:])
    no_text = perturb(TemporalAttentionBlock(16, num_heads=2, norm_groups=4, text_dim=None)).eval()
    with torch.no_grad():
        torch.testing.assert_close(no_text(video, frames, text_a), no_text(video, frames, text_b))
