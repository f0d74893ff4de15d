"""Training stages as objects (``lumiere.stages``): the registry, each stage's batch -> model input,
and a stage added in a test that trains through ``train()`` with no change to the loop."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from lumiere.config import config_from_dict
from lumiere.data.stream import collate, step_generator
from lumiere.diffusion import DiffusionObjective
from lumiere.models.presets import build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.models.text import load_text_encoder
from lumiere.stages import STAGES, Stage, TextToImageStage, get_stage
from lumiere.train import train

REPO = Path(__file__).resolve().parents[1]
BATCH, FRAMES, SIZE = 2, 4, 16


@pytest.fixture(scope="module")
def image_model_dir(tmp_path_factory):
    """A tiny image model saved as ``lumiere train`` stage t2i exports it (``unet/``)."""
    out = tmp_path_factory.mktemp("t2i") / "model"
    torch.manual_seed(0)
    build_unet2d("tiny").save_pretrained(out / "unet")
    return out


def stage_config(tmp_path, stage, init_from=None, **model):
    return config_from_dict(
        {
            "stage": stage,
            "output_dir": str(tmp_path / "run"),
            "model": {"preset": "tiny", "init_from": None if init_from is None else str(init_from), **model},
            "data": {"resolution": SIZE, "num_frames": FRAMES},
            "optim": {"batch_size": BATCH, "max_steps": 2, "warmup_steps": 1, "lr": 1e-3},
            "log_every": 1,
            "checkpoint_every": 100,
            "sample_steps": 1,
        }
    )


def test_the_registry_covers_every_stage_the_configs_name():
    assert set(STAGES) == {"t2i", "stunet", "ssr", "conditional"}
    for name, cls in STAGES.items():
        assert issubclass(cls, Stage) and cls.name == name and get_stage(name) is cls
    named = {
        yaml.safe_load(path.read_text()).get("stage", "t2i") for path in (REPO / "configs").rglob("*.yaml")
    }
    assert named and named <= set(STAGES), named - set(STAGES)


def test_an_unknown_stage_is_a_value_error_naming_the_accepted_ones():
    for call in (lambda: get_stage("latent"), lambda: config_from_dict({"stage": "latent"})):
        with pytest.raises(ValueError, match="config key stage must be one of") as error:
            call()
        assert "'latent'" in str(error.value)
        assert all(repr(name) in str(error.value) for name in STAGES)


@pytest.mark.parametrize("name", ["stunet", "ssr", "conditional"])
def test_stages_that_start_from_a_model_require_init_from(name):
    with pytest.raises(ValueError, match=f"model.init_from is required for stage '{name}'"):
        config_from_dict({"stage": name})


@pytest.mark.parametrize(
    "name, model, condition_channels",
    [
        ("t2i", {}, None),
        ("stunet", {}, None),
        ("ssr", {"ssr_scale": 2}, 3),
        ("ssr", {"ssr_scale": 2, "ssr_residual": True}, 3),
        ("conditional", {}, 4),
    ],
)
def test_each_stage_turns_a_batch_into_model_input_of_the_right_shape(
    tmp_path, image_model_dir, name, model, condition_channels
):
    stage = get_stage(name)(stage_config(tmp_path, name, image_model_dir, **model))
    dataset, _ = stage.build_dataset()
    batch = collate([dataset[i] for i in range(BATCH)])
    assert batch["video"].shape == (BATCH, 3, 1 if name == "t2i" else FRAMES, SIZE, SIZE)

    clean = stage.clean_sample(batch["video"])
    expected = (BATCH, 3, SIZE, SIZE) if name == "t2i" else (BATCH, 3, FRAMES, SIZE, SIZE)
    assert clean.shape == expected
    x0 = stage.diffused_sample(clean)
    assert x0.shape == clean.shape
    if model.get("ssr_residual"):  # the detail over bilinear upsampling, not the clip
        assert not torch.equal(x0, clean) and x0.abs().mean() < clean.abs().mean()

    objective = DiffusionObjective()
    condition = stage.draw_condition(
        clean, objective.scheduler.alphas_cumprod, torch.Generator().manual_seed(0)
    )
    if condition_channels is None:
        assert condition is None
    else:
        assert condition.video.shape == (BATCH, condition_channels, FRAMES, SIZE, SIZE)
        if name == "ssr":
            assert condition.noise_level.shape == (BATCH,)

    network = stage.build_model()
    assert isinstance(network, STUNet) == (name != "t2i")
    states, mask = load_text_encoder().encode(batch["caption"])
    timesteps = torch.tensor([10, 900])
    with torch.no_grad():
        prediction = stage.forward(network, x0, timesteps, states, mask, condition)
    assert prediction.shape == x0.shape

    loss = stage.training_loss(network, objective, batch, load_text_encoder(), step_generator(0, 0, 0))
    assert loss.shape == () and torch.isfinite(loss)


class GreyImageStage(TextToImageStage):
    """A stage that exists only in this test: the image model trained on grey frames."""

    name = "grey"
    clean_batches = 0

    def clean_sample(self, video: torch.Tensor) -> torch.Tensor:
        GreyImageStage.clean_batches += 1
        frames = video[:, :, 0]  # [b, 3, h, w]
        return frames.mean(dim=1, keepdim=True).expand_as(frames)


def test_a_stage_registered_in_a_test_trains_through_train(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "grey", GreyImageStage)
    GreyImageStage.clean_batches = 0
    result = train(stage_config(tmp_path, "grey"))
    assert result.step == 2 and GreyImageStage.clean_batches == 2
    assert (result.model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    assert (tmp_path / "run" / "samples" / "final.mp4").is_file()
