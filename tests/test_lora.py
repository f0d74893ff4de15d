"""LoRA on a STUNet's spatial layers (issue 30 item 4): trained beside the temporal layers with the
base spatial weights untouched, saved in diffusers' LoRA format for the image U-Net (diffusers'
own pipelines load it), and loaded back onto a STUNet."""

import pytest
import torch
from peft import get_peft_model_state_dict

from lumiere.config import config_from_dict
from lumiere.models.lora import (
    LORA_WEIGHT_NAME,
    add_spatial_lora,
    image_key,
    load_lora_weights,
    lora_parameters,
    lora_state_dict,
    save_lora_weights,
    spatial_target_modules,
    without_lora,
)
from lumiere.models.stunet import STUNet
from lumiere.train import train

FRAMES, SIZE = 4, 64  # 64x64 pixels -> 8x8 latents


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny SD 1.x and SDXL folders and their inflated latent pipeline folders."""
    from lumiere.pipelines.convert import inflate_sd_pipeline
    from lumiere.testing import make_tiny_sd_folder

    root = tmp_path_factory.mktemp("lora")
    out = {}
    for family in ("sd1", "sdxl"):
        source = make_tiny_sd_folder(root / f"{family}-sd", family)
        out[family] = (source, inflate_sd_pipeline(source, root / f"{family}-lumiere"))
    return out


def random_lora(stunet, rank=4, alpha=8.0):
    """LoRA adapters with random B (B = 0 at injection would make every check trivial)."""
    add_spatial_lora(stunet, rank, alpha)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in stunet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return stunet


def test_lora_goes_on_the_spatial_attention_projections_only(folders):
    stunet = STUNet.from_pretrained(folders["sd1"][1] / "stunet")
    targets = spatial_target_modules(stunet)
    assert targets and all(".spatial." in name for name in targets)
    assert all(name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") for name in targets)
    assert all(image_key(name).replace(".spatial", "") == image_key(name) for name in targets)
    temporal = [n for n, _ in stunet.named_modules() if "temporal_attentions" in n and n.endswith("to_q")]
    assert temporal and not set(temporal) & set(targets)
    with pytest.raises(ValueError, match="name no spatial layer"):
        spatial_target_modules(stunet, ["no_such_layer"])
    before = {n: p.requires_grad for n, p in stunet.named_parameters()}
    stunet.freeze_spatial()
    add_spatial_lora(stunet, 2)
    lora = {n for n, p in stunet.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora_parameters(stunet))
    temporal_params = {id(p) for p in stunet.temporal_parameters()}
    for name, param in stunet.named_parameters():
        if name not in lora:
            assert param.requires_grad == (id(param) in temporal_params), name
    assert len(before) < len(dict(stunet.named_parameters()))


def test_spatial_lora_trains_while_the_base_spatial_weights_stay_bit_identical(tmp_path, folders):
    from diffusers import StableDiffusionPipeline

    source, latent = folders["sd1"]
    config = config_from_dict(
        {
            "stage": "stunet",
            "output_dir": str(tmp_path / "run"),
            "model": {"init_from": str(latent), "lora_rank": 4, "lora_alpha": 8.0},
            "data": {"kind": "shapes", "length": 4, "num_frames": FRAMES, "resolution": SIZE},
            "optim": {"batch_size": 2, "max_steps": 3, "warmup_steps": 1, "lr": 1e-2, "ema_decay": 0.5},
            "log_every": 1,
            "checkpoint_every": 100,
            "sample_steps": 1,
        }
    )
    result = train(config)
    start = STUNet.from_pretrained(latent / "stunet")
    trained = dict(result.model.named_parameters())
    for name, param in start.named_parameters():
        key = name if name in trained else name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
        if any(param is p for p in start.temporal_parameters()):
            continue
        assert torch.equal(trained[key], param), name  # spatial base weights: bit-identical
    assert all(bool(p.abs().sum() > 0) for n, p in trained.items() if "lora_B" in n)  # B trained from 0
    assert not all(
        torch.equal(a, b)
        for a, b in zip(start.temporal_parameters(), result.model.temporal_parameters(), strict=True)
    )

    # The export: the base STUNet (spatial weights as they were) and the LoRA file beside it.
    exported = STUNet.from_pretrained(result.model_dir / "stunet")
    assert all(
        torch.equal(a, b)
        for a, b in zip(start.spatial_parameters(), exported.spatial_parameters(), strict=True)
    )
    assert (result.model_dir / LORA_WEIGHT_NAME).is_file()

    # diffusers loads the file into the image U-Net the STUNet was inflated from: same values.
    load_lora_weights(exported, result.model_dir)
    ours = lora_state_dict(exported)
    image_pipe = StableDiffusionPipeline.from_pretrained(source)
    image_pipe.load_lora_weights(result.model_dir)
    theirs = get_peft_model_state_dict(image_pipe.unet, adapter_name="default_0")
    assert set(theirs) == set(ours) and ours
    for key, value in ours.items():
        assert torch.equal(theirs[key], value), key
    to_q = image_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert to_q.scaling["default_0"] == 2.0  # alpha 8 / rank 4 came through the file's metadata


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lora_file_round_trip_and_fusing(tmp_path, folders, family):
    from diffusers import DiffusionPipeline

    source, latent = folders[family]
    stunet = random_lora(STUNet.from_pretrained(latent / "stunet"))
    path = save_lora_weights(stunet, tmp_path)
    assert path.name == LORA_WEIGHT_NAME

    # The image pipeline (SD or SDXL class, from model_index.json) loads it into its U-Net.
    image_pipe = DiffusionPipeline.from_pretrained(source)
    image_pipe.load_lora_weights(tmp_path)
    theirs = get_peft_model_state_dict(image_pipe.unet, adapter_name="default_0")
    ours = lora_state_dict(stunet)
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())

    # Back onto a fresh STUNet: the same network.
    loaded = load_lora_weights(STUNet.from_pretrained(latent / "stunet"), path)
    inputs = (
        torch.randn(1, 4, FRAMES, 8, 8),
        torch.tensor([500]),
        torch.randn(1, 7, stunet.config.unet_config["cross_attention_dim"]),
    )
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 16), "time_ids": torch.ones(1, 6)}
    with torch.no_grad():
        expected = stunet(*inputs, **kwargs).sample
        torch.testing.assert_close(loaded(*inputs, **kwargs).sample, expected)
        fused = without_lora(stunet, fuse=True)
        torch.testing.assert_close(fused(*inputs, **kwargs).sample, expected, rtol=1e-4, atol=1e-5)
        plain = without_lora(stunet)
        assert not any("lora_" in n for n, _ in plain.named_parameters())
        assert not torch.allclose(plain(*inputs, **kwargs).sample, expected)
    assert type(fused) is STUNet


def test_lora_is_refused_where_the_stage_cannot_take_it(folders):
    with pytest.raises(ValueError, match="model.lora_rank applies to stage 'stunet' only"):
        config_from_dict({"stage": "t2i", "model": {"preset": "tiny", "lora_rank": 4}})
    with pytest.raises(ValueError, match="model.lora_rank must be >= 0"):
        config_from_dict({"stage": "stunet", "model": {"init_from": str(folders["sd1"][1]), "lora_rank": -1}})


def test_a_fused_export_holds_the_lora_in_its_spatial_weights(tmp_path, folders):
    from lumiere.pipelines import LumierePipeline
    from lumiere.stages import get_stage

    config = config_from_dict(
        {
            "stage": "stunet",
            "output_dir": str(tmp_path / "run"),
            "model": {"init_from": str(folders["sd1"][1]), "lora_rank": 2, "lora_fuse": True},
            "data": {"kind": "shapes", "length": 2, "num_frames": FRAMES, "resolution": SIZE},
        }
    )
    stage = get_stage("stunet")(config)
    model = stage.build_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    out = stage.export(model, stage.load_text_encoder(), tmp_path / "model")
    assert not (out / LORA_WEIGHT_NAME).exists()
    exported = LumierePipeline.from_pretrained(out).stunet
    inputs = (torch.randn(1, 4, FRAMES, 8, 8), torch.tensor([500]), torch.randn(1, 7, 32))
    with torch.no_grad():
        torch.testing.assert_close(exported(*inputs).sample, model(*inputs).sample, rtol=1e-4, atol=1e-5)
