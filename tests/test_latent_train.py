"""Training in latent space (issue 30 item 4): a STUNet inflated from tiny SD 1.x / SDXL folders
fine-tunes on VAE latents of pixel clips, from caches or not, with the same loss either way."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lumiere.config import config_from_dict
from lumiere.data.latent_cache import ShardStore, build_caches, latent_store
from lumiere.data.stream import step_batches, step_generator
from lumiere.data.video_io import write_video
from lumiere.diffusion import DiffusionObjective
from lumiere.stages import get_stage
from lumiere.train import train

CLIPS, FRAMES, SIZE = 5, 4, 64  # 64x64 pixels -> 8x8 latents


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny SD 1.x and SDXL folders inflated into latent pipeline folders, and a video folder."""
    from lumiere.pipelines.convert import inflate_sd_pipeline
    from lumiere.testing import make_tiny_sd_folder

    root = tmp_path_factory.mktemp("latent")
    out = {}
    for family in ("sd1", "sdxl"):
        out[f"{family}-sd"] = source = make_tiny_sd_folder(root / f"{family}-sd", family)
        out[family] = inflate_sd_pipeline(source, root / f"{family}-lumiere")
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    words = ["red circle", "blue square", "green cat", "yellow dog", "white star"]
    for i in range(CLIPS):
        frames = np.zeros((FRAMES + 2, SIZE, SIZE, 3), np.float32)
        for f in range(FRAMES + 2):  # a box moving right over a coloured background
            frames[f] = rng.uniform(0, 0.3, 3)
            frames[f, 20:40, 4 + 6 * f : 20 + 6 * f] = rng.uniform(0.5, 1, 3)
        write_video(videos / f"clip{i}.mp4", frames, fps=8)
        (videos / f"clip{i}.txt").write_text(f"a {words[i]} moving right")
    out["videos"] = videos
    return out


def latent_config(tmp_path, init_from, videos, cache=False, **overrides):
    data = {"kind": "folder", "path": str(videos), "num_frames": FRAMES, "resolution": SIZE}
    if cache:
        data["cache_dir"] = str(tmp_path / "cache")
    config = {
        "stage": "stunet",
        "output_dir": str(tmp_path / "run"),
        "model": {"init_from": str(init_from)},
        "data": data,
        "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1, "lr": 1e-3},
        "log_every": 1,
        "checkpoint_every": 100,
        "sample_steps": 1,
        "sample_prompts": ["a red circle moving right"],
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        config[section][name] = value
    return config_from_dict(config)


def step_loss(stage, model, batch, step=0):
    objective = DiffusionObjective(stage.noise_scheduler())
    text_encoder = stage.load_text_encoder()
    generator = step_generator(stage.config.seed, step, 0)
    with torch.no_grad():
        return stage.training_loss(model, objective, batch, text_encoder, generator)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd1-sd"])  # sd1-sd: the SD folder itself, not inflated
def test_the_loss_from_caches_equals_the_loss_without_them(tmp_path, folders, family):
    plain = get_stage("stunet")(latent_config(tmp_path, folders[family], folders["videos"]))
    cached_config = latent_config(tmp_path, folders[family], folders["videos"], cache=True)
    counts = build_caches(cached_config, progress=False)
    assert counts["encoded"] == CLIPS and counts["bad"] == 0
    cached = get_stage("stunet")(cached_config)
    model = plain.build_model()
    assert cached.build_model() is not None and plain.latent is not None
    assert plain.micro_conditioning == (family == "sdxl")
    assert type(plain.load_text_encoder()).__name__ == (
        "SDXLTextEncoder" if family == "sdxl" else "SDTextEncoder"
    )

    for step in (0, 1):
        batches = [next(step_batches(s.build_dataset()[0], True, 2, 0, 1, step, 0)) for s in (plain, cached)]
        assert batches[0]["video"].shape == (2, 3, FRAMES, SIZE, SIZE)
        assert batches[1]["moments"].shape == (2, 8, FRAMES, SIZE // 8, SIZE // 8)
        assert batches[0]["caption"] == batches[1]["caption"]
        losses = [step_loss(s, model, b, step) for s, b in zip((plain, cached), batches, strict=True)]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    # The latent is a draw from the posterior, not its mean: another step's generator, another latent.
    moments = batches[1]["moments"]
    draws = [cached.batch_sample({"moments": moments}, step_generator(0, s, 0), "cpu") for s in (0, 1)]
    assert not torch.equal(draws[0], draws[1])
    assert draws[0].shape == (2, 4, FRAMES, SIZE // 8, SIZE // 8)


def test_training_from_caches_never_loads_the_vae_or_text_encoder(tmp_path, folders, monkeypatch):
    import diffusers

    from lumiere.models import text

    family = "sdxl"
    config = latent_config(tmp_path / "plain", folders[family], folders["videos"], optim__max_steps=3)
    plain = train(config, stop_after_steps=2)
    cached_config = latent_config(
        tmp_path / "cached", folders[family], folders["videos"], cache=True, optim__max_steps=3
    )
    build_caches(cached_config, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("training from caches loaded a VAE or text encoder")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", refuse)
    monkeypatch.setattr(text.TextEncoder, "from_pretrained", refuse)
    monkeypatch.setattr(text, "load_text_encoder", refuse)
    cached = train(cached_config, stop_after_steps=2)
    assert cached.step == plain.step == 2

    def losses(result_dir):
        return [json.loads(line)["loss"] for line in (result_dir / "metrics.jsonl").read_text().splitlines()]

    assert np.allclose(losses(tmp_path / "cached" / "run"), losses(tmp_path / "plain" / "run"), rtol=1e-5)
    for a, b in zip(cached.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_latent_training_exports_a_latent_pipeline(tmp_path, folders, family):
    from lumiere.models.stunet import STUNet
    from lumiere.pipelines import LumierePipeline

    config = latent_config(tmp_path, folders[family], folders["videos"], cache=family == "sd1")
    if config.data.cache_dir:
        build_caches(config, progress=False)
    result = train(config)
    assert np.isfinite(result.final_loss)
    start = STUNet.from_pretrained(folders[family] / "stunet")
    trained = STUNet.from_pretrained(result.model_dir / "stunet")
    spatial = [
        torch.equal(a, b)
        for a, b in zip(start.spatial_parameters(), trained.spatial_parameters(), strict=True)
    ]
    temporal = [
        torch.equal(a, b)
        for a, b in zip(start.temporal_parameters(), trained.temporal_parameters(), strict=True)
    ]
    assert all(spatial) and not all(temporal)  # spatial layers frozen by default; temporal ones trained
    index = json.loads((result.model_dir / "model_index.json").read_text())
    assert (
        index["text_encoder"]
        == json.loads((folders[family] / "model_index.json").read_text())["text_encoder"]
    )
    pipe = LumierePipeline.from_pretrained(result.model_dir)
    assert pipe.vae is not None and (result.model_dir / "vae" / "config.json").is_file()
    assert (tmp_path / "run" / "samples" / "final.mp4").is_file()
    frames = pipe("a red circle moving right", num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np").frames  # fmt: skip
    assert frames.shape == (1, FRAMES, SIZE, SIZE, 3)


def test_cache_building_resumes_after_a_kill_and_writes_no_shard_twice(tmp_path, folders, monkeypatch):
    from lumiere.models import vae as vae_module

    config = latent_config(tmp_path, folders["sd1"], folders["videos"], cache=True)
    real, calls = vae_module.encode_moments, []

    def dies_on_the_fourth_clip(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(vae_module, "encode_moments", dies_on_the_fourth_clip)
    with pytest.raises(KeyboardInterrupt):
        build_caches(config, shard_size=2, progress=False)
    stage = get_stage("stunet")(config)
    directory = latent_store(config.data.cache_dir, stage.latent.identity).directory
    before = {p: p.read_bytes() for p in directory.glob("shard-*.safetensors")}
    assert len(before) == 1 and not list(directory.glob(".*"))  # clips 0-1 kept, no partial shard left
    with pytest.raises(ValueError, match="lacks 3 of 5 training clips; build it with `lumiere data cache"):
        stage.build_dataset()

    monkeypatch.setattr(vae_module, "encode_moments", real)
    counts = build_caches(config, shard_size=2, progress=False)
    assert counts["encoded"] == 3  # only the clips no shard held
    after = sorted(directory.glob("shard-*.safetensors"))
    assert len(after) == 3 and all(p.read_bytes() == data for p, data in before.items())
    keys = []
    for shard in after:
        with safe_open(shard, framework="pt") as handle:
            keys.extend(handle.keys())
    assert len(keys) == len(set(keys)) == CLIPS == len(ShardStore(directory).index)
    assert build_caches(config, progress=False)["encoded"] == 0  # complete: nothing to do


def test_shards_cache_their_captions_only_and_train_without_the_text_encoder(tmp_path, folders, monkeypatch):
    from lumiere.data.shards import write_shards
    from lumiere.models import text

    write_shards(folders["videos"], tmp_path / "shards", progress=False)
    config = latent_config(tmp_path, folders["sd1"], folders["videos"], cache=True, optim__max_steps=2)
    config.data.kind, config.data.path, config.data.shuffle_buffer = "shards", str(tmp_path / "shards"), 2
    counts = build_caches(config, progress=False)
    assert counts["clips"] == CLIPS and counts["encoded"] == 0  # no latents: each epoch draws new windows
    # + "": the sample prompt is also clip 0's caption, cached once
    assert counts["captions"] == CLIPS + 1 and counts["captions_encoded"] == CLIPS + 1
    assert build_caches(config, progress=False)["captions_encoded"] == 0  # complete: nothing to do

    def refuse(*args, **kwargs):
        raise AssertionError("training from the text cache loaded the text encoder")

    monkeypatch.setattr(text.TextEncoder, "from_pretrained", refuse)
    monkeypatch.setattr(text, "load_text_encoder", refuse)
    result = train(config, stop_after_steps=2)
    assert result.step == 2 and np.isfinite(result.final_loss)


def test_caches_of_unbounded_shapes_data_are_a_value_error(tmp_path, folders):
    config = config_from_dict(
        {
            "stage": "stunet",
            "model": {"init_from": str(folders["sd1"])},
            "data": {"kind": "shapes", "num_frames": FRAMES, "resolution": SIZE, "cache_dir": str(tmp_path)},
        }
    )
    with pytest.raises(ValueError, match="data.length"):
        build_caches(config, progress=False)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"stage": "conditional"}, "stage 'conditional' does not train in latent space"),
        ({"stage": "ssr"}, "stage 'ssr' does not train in latent space"),
        ({"stage": "stunet", "data": {"resolution": 36}}, "multiple of the VAE's 8x"),
        ({"stage": "stunet", "data": {"vae_batch_size": 0}}, "data.vae_batch_size must be >= 1"),
    ],
)
def test_latent_config_errors_name_the_key(folders, config, match):
    config = {**config, "model": {"init_from": str(folders["sd1"])}}
    with pytest.raises(ValueError, match=match):
        config_from_dict(config)


def test_data_cache_is_a_cli_subcommand(tmp_path, folders):
    import yaml

    from lumiere.cli import main

    config = latent_config(tmp_path, folders["sd1"], folders["videos"], cache=True)
    path = tmp_path / "config.yaml"
    from lumiere.config import config_to_dict

    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert main(["data", "cache", str(path)]) == 0
    stage = get_stage("stunet")(config)
    assert len(stage.build_dataset()[0]) == CLIPS
    assert Path(config.data.cache_dir, "text").is_dir()


def test_latent_training_stopped_and_resumed_equals_uninterrupted(tmp_path, folders):
    runs = {}
    for name in ("whole", "resumed"):
        config = latent_config(tmp_path / name, folders["sd1"], folders["videos"], optim__max_steps=3)
        if name == "resumed":
            assert train(config, stop_after_steps=1).model_dir is None
        runs[name] = train(config, resume=name == "resumed")
    whole, resumed = (dict(runs[n].model.named_parameters()) for n in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # the posterior draws are the step's
