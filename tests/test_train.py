"""The Accelerate training loop: overfitting, exact resume, configs, a real 2-process DDP step."""

import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lumiere.config import config_from_dict, load_config
from lumiere.data.stream import StepSampler
from lumiere.diffusion import DiffusionObjective
from lumiere.models.text import load_text_encoder
from lumiere.stages import get_stage
from lumiere.train import export_checkpoint, train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **overrides):
    data = {
        "stage": "t2i",
        "output_dir": str(tmp_path / "run"),
        "model": {"preset": "tiny"},
        "data": {"resolution": 16, "num_frames": 4},
        "optim": {"batch_size": 2, "max_steps": 6, "warmup_steps": 2, "lr": 1e-3},
        "log_every": 1,
        "checkpoint_every": 100,
        "sample_steps": 2,
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            data[section] = {**data[section], name: value}
        else:
            data[key] = value
    return config_from_dict(data)


def fixed_eval_loss(model, clip, captions, seed=123, count=8):
    """Loss on fixed (timestep, noise) draws, so before/after are comparable."""
    objective = DiffusionObjective()
    generator = torch.Generator().manual_seed(seed)
    states, mask = load_text_encoder().encode(captions)
    x0 = clip.expand(count, *clip.shape[1:])
    timesteps = torch.linspace(50, 950, count).long()
    noise = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        prediction = model(
            objective.add_noise(x0, noise, timesteps),
            timesteps,
            states.expand(count, -1, -1),
            encoder_attention_mask=mask.expand(count, -1),
        ).sample
    return float(objective.loss(prediction, x0, noise, timesteps))


def test_tiny_stunet_overfits_one_clip(tmp_path):
    image = train(tiny_config(tmp_path / "a", **{"optim.max_steps": 2}))
    config = tiny_config(
        tmp_path / "b",
        stage="stunet",
        **{
            "model.init_from": str(image.model_dir),
            "model.freeze_spatial": False,
            "data.length": 1,
            "optim.max_steps": 150,
            "optim.batch_size": 4,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 10,
            "optim.caption_dropout": 0.0,
            "optim.min_snr_gamma": None,
            "log_every": 50,
        },
    )
    stage = get_stage(config.stage)(config)
    dataset, _ = stage.build_dataset()
    item = dataset[0]
    clip = stage.clean_sample(item["video"][None])
    before = fixed_eval_loss(stage.build_model().eval(), clip, [item["caption"]])
    result = train(config)
    after = fixed_eval_loss(result.model.eval(), clip, [item["caption"]])
    assert after * 5 <= before, (before, after)


def test_motion_mix_reaches_the_training_data(tmp_path):
    config = tiny_config(
        tmp_path,
        stage="stunet",
        **{"model.init_from": str(tmp_path), "data.motion_mix": [0, 0, 1, 1, 0, 0, 0]},
    )
    dataset, _ = get_stage(config.stage)(config).build_dataset()
    assert {dataset[i]["attributes"]["motion"] for i in range(20)} == {"moving up", "moving down"}


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    uninterrupted = train(tiny_config(tmp_path / "full"))
    config = tiny_config(tmp_path / "resumed")
    first = train(config, stop_after_steps=3)
    assert first.step == 3 and first.model_dir is None
    second = train(config, resume=True)
    assert second.step == 6
    expected = uninterrupted.model.state_dict()
    for name, value in second.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # the EMA (what is exported) matches too
    a = load_file(tmp_path / "full/run/model/unet/diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "resumed/run/model/unet/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, caplog):
    uninterrupted = train(tiny_config(tmp_path / "full"))
    config = tiny_config(tmp_path / "resumed", checkpoint_every=1)
    train(config, stop_after_steps=3)
    checkpoints = Path(config.output_dir) / "checkpoints"
    newest = checkpoints / "step_00000003" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-5] ^= 0xFF  # a disk fault: the checksum no longer matches
    newest.write_bytes(bytes(data))
    resumed = train(config, resume=True)
    assert "skipping a damaged checkpoint" in caplog.text and "step_00000003" in caplog.text
    assert resumed.step == 6
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_export_replaces_the_previous_model_atomically(tmp_path):
    config = tiny_config(tmp_path, **{"optim.max_steps": 1})
    first = train(config)
    again = train(config, resume=True)  # re-exports over the first export
    assert again.model_dir == first.model_dir
    siblings = sorted(p.name for p in first.model_dir.parent.iterdir() if p.name.startswith("."))
    assert siblings == []  # no staging or previous folder left behind
    assert (first.model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_checkpoint_exports_as_a_run_ending_there_would(tmp_path):
    short = train(tiny_config(tmp_path / "short", **{"optim.max_steps": 2}))
    config = tiny_config(tmp_path / "long", checkpoint_every=2, keep_checkpoints=3)
    long = train(config)  # checkpoints at steps 2, 4 and 6, the model exported at 6
    run = Path(config.output_dir)
    before = _files(run)
    weights = "unet/diffusion_pytorch_model.safetensors"

    newest = export_checkpoint(config, tmp_path / "newest")
    at_2 = export_checkpoint(config, tmp_path / "at_2", step=2)
    assert _files(run) == before  # the run's folder is only read
    assert _files(newest)[weights] == _files(long.model_dir)[weights]
    assert _files(at_2)[weights] == _files(short.model_dir)[weights]
    assert _files(at_2)[weights] != _files(newest)[weights]
    with pytest.raises(ValueError, match=r"no checkpoint of step 3 .* holds steps 2, 4, 6"):
        export_checkpoint(config, tmp_path / "at_3", step=3)
    assert not (tmp_path / "at_3").exists()


def test_export_without_a_checkpoint_names_the_folder(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ValueError, match=r"no checkpoint to export under .*checkpoints"):
        export_checkpoint(config, tmp_path / "out")


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    result = train(tiny_config(tmp_path, **{"optim.max_steps": 1}), resume=True)
    assert result.step == 1 and result.model_dir is not None


def test_step_sampler_is_a_function_of_the_step():
    full = StepSampler(10, 3, rank=0, world=1, start_step=0, seed=5, shuffle=True)
    resumed = StepSampler(10, 3, rank=0, world=1, start_step=4, seed=5, shuffle=True)
    stream = list(islice(full, 30))
    assert list(islice(resumed, 18)) == stream[12:30]
    assert sorted(stream[:10]) == list(range(10))  # each epoch is a permutation
    ranks = [StepSampler(100, 2, rank=r, world=2, start_step=0, seed=0, shuffle=False) for r in (0, 1)]
    first = [list(islice(s, 4)) for s in ranks]
    assert first == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key optim.learning_rate"):
        config_from_dict({"optim": {"learning_rate": 1e-4}})
    with pytest.raises(ValueError, match="config key optim.batch_size must be an integer"):
        config_from_dict({"optim": {"batch_size": "eight"}})
    with pytest.raises(ValueError, match="config key stage must be one of"):
        config_from_dict({"stage": "video"})
    with pytest.raises(ValueError, match="optim.lr must be > 0"):
        config_from_dict({"optim": {"lr": 0.0}})
    with pytest.raises(ValueError, match="model.init_from is required"):
        config_from_dict({"stage": "stunet"})


TRAINING_CONFIGS = sorted(
    p.relative_to(REPO / "configs").as_posix()
    for p in (REPO / "configs").rglob("*.yaml")
    if "accelerate" not in p.parts  # configs/accelerate: `accelerate launch --config_file` files
)


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_shipped_configs_validate(name):
    config = load_config(REPO / "configs" / name)
    assert config.optim.max_steps >= 1


DDP_SCRIPT = """
import sys, torch
from accelerate import Accelerator
from safetensors.torch import save_file
from lumiere.config import config_from_dict
from lumiere.train import export_checkpoint, train

out = sys.argv[1]
accelerator = Accelerator(cpu=True)
config = config_from_dict({
    "stage": "t2i", "output_dir": out, "model": {"preset": "tiny"}, "data": {"resolution": 16},
    "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1, "lr": 1e-3},
    "checkpoint_every": 100, "sample_steps": 1,
})
result = train(config, accelerator=accelerator)
state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
save_file(state, f"{out}/rank{accelerator.process_index}_of_{accelerator.num_processes}.safetensors")
"""


def test_two_process_data_parallel_step(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(script),
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = load_file(tmp_path / "out/rank0_of_2.safetensors")
    rank1 = load_file(tmp_path / "out/rank1_of_2.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
