"""The paper's cascade on DeepFloyd IF (issue 29, part 3), offline and tiny: `lumiere inflate` on an
IF-shaped folder built here (tiny IF-I / IF-II U-Nets, a tiny T5 from a config, a word-level
tokenizer, IF's noise schedule), generation from the result, and `lumiere train` from it."""

import json

import pytest
import torch
import yaml
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from lumiere.cli import main
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline

TEXT_WIDTH = 32  # the tiny T5's d_model: IF's encoder_hid_dim (4096 for T5-XXL)
WORDS = ["red", "green", "blue", "circle", "square", "moves", "left", "right", "a"]

# DeepFloyd/IF-I-XL-v1.0 unet/config.json, channels scaled down (as in test_inflate_families.py).
IF_I = dict(
    sample_size=16,
    in_channels=3,
    out_channels=6,  # learned variance: 3 mean + 3 variance channels
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=32,
    encoder_hid_dim=TEXT_WIDTH,
    addition_embed_type="text",
    addition_embed_type_num_heads=2,
    cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
)
# DeepFloyd/IF-II-L-v1.0: the upsampled low-res image concatenated (6 = 3 + 3 input channels), its
# noise level as a "timestep" class embedding; 2x stage I's size here (4x in IF).
IF_II = dict(
    IF_I,
    sample_size=32,
    in_channels=6,
    class_embed_type="timestep",
    mid_block_scale_factor=1.414,
    time_embedding_act_fn="gelu",
    time_embedding_dim=32,
)
# DeepFloyd/IF-I-XL-v1.0 scheduler/scheduler_config.json
IF_SCHEDULE = dict(
    beta_schedule="squaredcos_cap_v2",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    variance_type="learned_range",
    thresholding=True,
    dynamic_thresholding_ratio=0.95,
    sample_max_value=1.5,
    clip_sample=True,
    clip_sample_range=1.0,
)


def _save_unet(config, directory, seed, variant=None):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    with torch.no_grad():  # diffusers zero-initialises some layers; perturb so every weight matters
        for param in unet.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    unet.save_pretrained(directory / "unet", variant=variant)


def _save_text(directory, variant=None):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: i + 3 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=8
    )
    fast.save_pretrained(directory / "tokenizer")
    torch.manual_seed(1)
    config = transformers.T5Config(
        vocab_size=len(vocab), d_model=TEXT_WIDTH, d_ff=64, d_kv=8, num_layers=1, num_heads=4
    )
    transformers.T5EncoderModel(config).save_pretrained(directory / "text_encoder", variant=variant)


def _if_folder(directory, unet_config, seed, text=True, variant=None):
    """A diffusers IF folder as `DiffusionPipeline.save_pretrained` writes one (no safety checker)."""
    _save_unet(unet_config, directory, seed, variant)
    index = {"_class_name": "IFPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    if text:
        _save_text(directory, variant)
        DDPMScheduler(**IF_SCHEDULE).save_pretrained(directory / "scheduler")
        index |= {
            "text_encoder": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }
    (directory / "model_index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture(scope="module")
def inflated(tmp_path_factory):
    root = tmp_path_factory.mktemp("if")
    stage_1 = _if_folder(root / "IF-I", IF_I, seed=0)
    stage_2 = _if_folder(root / "IF-II", IF_II, seed=2, text=False)
    out = root / "lumiere-if"
    assert main(["inflate", str(stage_1), "--ssr", str(stage_2), "--out", str(out)]) == 0
    return stage_1, out


def test_inflate_writes_a_pipeline_with_the_t5_referenced_not_copied(inflated):
    source, out = inflated
    assert sorted(p.name for p in (out / "text_encoder").iterdir()) == ["text_encoder.json"]
    assert json.loads((out / "text_encoder" / "text_encoder.json").read_text())["path"] == str(
        source.resolve()
    )
    schedule = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert schedule["prediction_type"] == "epsilon" and schedule["variance_type"] == "learned_range"
    pipe = LumierePipeline.from_pretrained(out)
    assert pipe.stunet.temporal_factor == 2  # time halved at the spatial downsampler (paper default)
    assert pipe.ssr.temporal_factor == 1 and pipe.ssr_scale == 2
    # The image model's weights are kept: its conv_out (6 channels, learned variance) is the same.
    image = UNet2DConditionModel.from_pretrained(source / "unet")
    torch.testing.assert_close(pipe.stunet.conv_out.weight, image.conv_out.weight)


def test_a_missing_folder_is_an_error_naming_it(tmp_path, capsys):
    assert main(["inflate", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 1
    assert "model_index.json not found" in capsys.readouterr().err


def test_generate_with_the_inflated_cascade(inflated):
    _, out = inflated
    pipe = LumierePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)

    def clip(seed):
        return pipe(
            "a red circle moves left", num_frames=4, num_inference_steps=2, guidance_scale=2.0,
            ssr_steps=2, ssr_window=4, generator=torch.Generator().manual_seed(seed), output_type="pt",
        ).frames  # fmt: skip

    frames = clip(0)
    assert frames.shape == (1, 4, 32, 32, 3)  # stage II's SSR doubles stage I's 16x16
    assert torch.isfinite(frames).all()
    torch.testing.assert_close(clip(0), frames)
    assert (clip(1) - frames).abs().max() > 1e-3


def _named(model: STUNet, parameters) -> set[str]:
    ids = {id(p) for p in parameters}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize(("stage", "size"), [("stunet", 16), ("ssr", 32)])
def test_train_fine_tunes_the_temporal_layers_of_the_inflated_models(inflated, tmp_path, stage, size):
    _, out = inflated
    config = {
        "stage": stage,
        "output_dir": str(tmp_path / "run"),
        "model": {"init_from": str(out)},
        "data": {"resolution": size, "num_frames": 4},
        "optim": {"batch_size": 1, "max_steps": 2, "warmup_steps": 1, "lr": 1e-2},
        "log_every": 1,
        "checkpoint_every": 100,
        "sample_steps": 1,
    }
    path = tmp_path / "if.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0

    tuned = LumierePipeline.from_pretrained(tmp_path / "run" / "model")
    # The exported pipeline keeps IF's objective and T5.
    assert tuned.scheduler.config.prediction_type == "epsilon"
    assert tuned.scheduler.config.variance_type == "learned_range"
    assert tuned.text_encoder.dim == TEXT_WIDTH
    assert sorted(p.name for p in (tmp_path / "run" / "model" / "text_encoder").iterdir()) == [
        "text_encoder.json"
    ]
    before = STUNet.from_pretrained(out / stage)
    old = load_file(out / stage / "diffusion_pytorch_model.safetensors")
    new = getattr(tuned, stage).state_dict()
    temporal = _named(before, before.temporal_parameters())
    # Spatial layers are frozen (the SSR's input conv trains: the low-res clip's way in).
    spatial = {name for name in _named(before, before.spatial_parameters()) if not name.startswith("conv_in")}
    assert temporal and spatial
    assert any((new[name] - old[name]).abs().max() > 0 for name in temporal)
    for name in spatial:
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=0)


def test_a_pipeline_of_our_schedule_fine_tunes_with_our_objective():
    # The objective follows the saved schedule; for the shipped model's, it is ours exactly (so
    # fine-tuning our own pipelines trains as before), and IF's gives epsilon on IF's betas.
    from lumiere.diffusion import make_noise_scheduler, noise_scheduler_from_config
    from lumiere.pipelines import DEFAULT_MODEL_DIR

    saved = json.loads((DEFAULT_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    public = lambda scheduler: {k: v for k, v in scheduler.config.items() if not k.startswith("_")}  # noqa: E731
    assert public(noise_scheduler_from_config(saved)) == public(make_noise_scheduler())
    theirs = noise_scheduler_from_config(DDPMScheduler(**IF_SCHEDULE).config)
    assert theirs.config.prediction_type == "epsilon" and theirs.config.variance_type == "learned_range"
    torch.testing.assert_close(theirs.alphas_cumprod, DDPMScheduler(**IF_SCHEDULE).alphas_cumprod)


def test_inflate_reads_a_folder_downloaded_as_the_fp16_variant(tmp_path):
    """DeepFloyd's own instructions download IF with variant="fp16": only *.fp16.* weights exist."""
    source = _if_folder(tmp_path / "IF-I-fp16", IF_I, seed=0, variant="fp16")
    assert not (source / "unet" / "diffusion_pytorch_model.safetensors").exists()
    plain = _if_folder(tmp_path / "IF-I", IF_I, seed=0)
    for folder in (source, plain):
        assert main(["inflate", str(folder), "--out", str(folder.with_name(folder.name + "-lumiere"))]) == 0
    fp16, fp32 = (
        LumierePipeline.from_pretrained(folder.with_name(folder.name + "-lumiere")) for folder in (source, plain)
    )
    assert fp16.stunet.dtype == torch.float32  # inflated in fp32 master weights
    for a, b in zip(fp16.stunet.spatial_parameters(), fp32.stunet.spatial_parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the image model's weights, read from the variant files
