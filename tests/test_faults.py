"""Faults injected into training and loading: nothing trained is lost, nothing corrupted loads.

- ``lumiere train`` killed with SIGKILL at three seeded random moments, resumed each time with
  ``--resume``, ends bit for bit where an uninterrupted run ends (weights, EMA, exported model);
  after every kill each visible checkpoint passes its checksums.
- ``save_checkpoint`` interrupted at every file-system operation (a simulated kill) never leaves
  a visible checkpoint that fails to load, and the next save clears what the kill left.
- Corrupted, truncated or mismatched files in checkpoints, saved STUNets and pipelines fail to
  load with an error naming the file (or the config key).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lumiere.checkpoint import (
    CHECKSUMS,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from lumiere.config import config_from_dict
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline
from lumiere.train import train

MAX_STEPS = 14
KILLS = 3
KILL_SEED = 13  # the seed of the kill moments: fractions 0.29, 0.65, 0.87 of a step
STEP_TIMEOUT_S = 600  # per launch: generous, the CI machine may be busy


def run_config(output_dir: Path) -> dict:
    """A tiny t2i run that checkpoints every step (so every kill lands near a checkpoint write)."""
    return {
        "stage": "t2i",
        "output_dir": str(output_dir),
        "model": {"preset": "tiny"},
        "data": {"resolution": 16, "num_frames": 4},
        "optim": {"batch_size": 2, "max_steps": MAX_STEPS, "warmup_steps": 2, "lr": 1e-3},
        "log_every": 1,
        "checkpoint_every": 1,
        "keep_checkpoints": 2,
        "sample_steps": 1,
    }


def latest_step(checkpoints: Path) -> int:
    found = list_checkpoints(checkpoints)
    return int(found[-1].name.split("_")[1].split(".")[0]) if found else 0


def assert_all_checkpoints_load(checkpoints: Path) -> None:
    """Every checkpoint a resume could pick verifies by checksum and reads back."""
    for path in list_checkpoints(checkpoints):
        load_checkpoint(path)  # raises CheckpointError naming a bad file


def launch(config_path: Path, resume: bool, log: Path) -> subprocess.Popen:
    """``lumiere train CONFIG [--resume]`` in a new process; its stderr goes to ``log``."""
    command = [sys.executable, "-m", "lumiere.cli", "--log-level", "WARNING", "train", str(config_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stderr:
        return subprocess.Popen(
            command + (["--resume"] if resume else []), env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )


def kill_during_step(
    process: subprocess.Popen, checkpoints: Path, step: int, fraction: float, log: Path
) -> str:
    """SIGKILL ``process`` ``fraction`` of the way into the step after its checkpoint ``step``.

    The step's length is taken from the last one (between this process's checkpoints ``step - 1``
    and ``step``), so the kill falls anywhere in a training step, a checkpoint write or the
    deletion of an old checkpoint. Returns what was on disk just after the kill.
    """
    deadline = time.monotonic() + STEP_TIMEOUT_S
    seen: dict[int, float] = {}  # checkpoint step -> when it appeared
    while (latest := latest_step(checkpoints)) < step:
        seen.setdefault(latest, time.monotonic())
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before step {step}: {log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint of step {step} after {STEP_TIMEOUT_S} s")
        time.sleep(0.002)
    now = time.monotonic()
    time.sleep(fraction * (now - seen.get(step - 1, now - 0.1)))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return " ".join(sorted(p.name for p in checkpoints.iterdir()))


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    # 1. The uninterrupted run, in this process (one thread, as the subprocesses).
    uninterrupted = train(config_from_dict(run_config(tmp_path / "full")))
    assert uninterrupted.step == MAX_STEPS

    # 2. The same run launched as `lumiere train`, SIGKILLed three times, resumed each time.
    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(run_config(out)))
    rng = random.Random(KILL_SEED)
    moments = []  # (checkpoint waited for, fraction of the next step, directories after the kill)
    for i in range(KILLS):
        log = tmp_path / f"launch_{i}.log"
        resumed_at = latest_step(checkpoints)
        process = launch(config_path, resume=i > 0, log=log)
        # Two checkpoints of this process's own (the step time), then a random moment of the next step.
        step, fraction = resumed_at + 2 + rng.randrange(2), rng.random()
        on_disk = kill_during_step(process, checkpoints, step, fraction, log)
        assert process.returncode == -signal.SIGKILL, log.read_text()
        moments.append((step, round(fraction, 2), on_disk))
        assert_all_checkpoints_load(checkpoints)  # no half-written checkpoint is ever visible
        assert latest_step(checkpoints) >= step  # and none that was complete was lost
    log = tmp_path / "launch_final.log"
    final = launch(config_path, resume=True, log=log)
    assert final.wait(timeout=STEP_TIMEOUT_S) == 0, log.read_text()[-3000:]
    assert_all_checkpoints_load(checkpoints)
    assert not [p for p in checkpoints.iterdir() if p.name.endswith((".tmp", ".deleting", ".replaced"))]
    print("kills (checkpoint waited for, fraction of the next step, checkpoints/ after the kill):", moments)

    # 3. Bitwise the same: trained weights, EMA, optimizer, counters, exported EMA model.
    expected = load_checkpoint(tmp_path / "full/checkpoints" / f"step_{MAX_STEPS:08d}")
    got = load_checkpoint(checkpoints / f"step_{MAX_STEPS:08d}")
    for part in ("model", "ema"):
        assert expected[part].keys() == got[part].keys()
        for key in expected[part]:
            assert torch.equal(expected[part][key], got[part][key]), (part, key, moments)
    for key, value in uninterrupted.model.state_dict().items():
        assert torch.equal(got["model"][key], value), (key, moments)
    assert got["state"]["step"] == MAX_STEPS and got["state"]["skipped_steps"] == 0
    adam_expected = expected["optimizer"]["optimizer"]["state"]
    adam_got = got["optimizer"]["optimizer"]["state"]
    assert adam_expected.keys() == adam_got.keys()
    for index in adam_expected:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(adam_expected[index][name], adam_got[index][name]), (index, name, moments)
    exported = "model/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "full" / exported), load_file(out / exported)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), moments


# ---------------------------------------------------------------------------------------------
# save_checkpoint killed at every file-system operation (simulated, in-process).
# ---------------------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` catches it."""


class KillSwitch:
    """Counts the file-system operations of ``save_checkpoint`` and kills it at operation ``at``.

    The operations: each fsync (after each file is written), each rename, each tree removal. A
    removal killed part-way deletes one file first, as a real kill inside ``rmtree`` would.
    """

    def __init__(self, monkeypatch, at: int | None):
        import lumiere.checkpoint as checkpoint

        self.at, self.count = at, 0
        replace, rmtree = os.replace, shutil.rmtree

        def tick() -> None:
            if self.count == self.at:
                raise Killed
            self.count += 1

        def killable_fsync(path):
            tick()  # no real fsync: a simulated kill leaves the page cache, as SIGKILL does

        def killable_replace(src, dst):
            tick()
            replace(src, dst)

        def killable_rmtree(path, ignore_errors=False):
            try:
                tick()
            except Killed:
                files = [p for p in Path(path).rglob("*") if p.is_file()]
                if files:
                    files[0].unlink()
                raise
            rmtree(path, ignore_errors=ignore_errors)

        monkeypatch.setattr(checkpoint, "_fsync", killable_fsync)
        monkeypatch.setattr(checkpoint.os, "replace", killable_replace)
        monkeypatch.setattr(checkpoint.shutil, "rmtree", killable_rmtree)


def tiny_state(step: int) -> dict:
    torch.manual_seed(step)
    weights = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    return dict(
        model_state=weights,
        ema_state={k: v * 0.5 for k, v in weights.items()},
        optimizer_state={"optimizer": {"state": {}, "param_groups": []}, "lr_schedule": {}},
        state={"step": step, "skipped_steps": 0},
    )


@pytest.mark.parametrize("keep", [1, 2])
@pytest.mark.parametrize("rewrite", [False, True], ids=["new-step", "same-step-again"])
def test_checkpoint_write_killed_at_every_operation(tmp_path, monkeypatch, keep, rewrite):
    import lumiere.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_fsync", lambda path: None)  # durability is not tested here: speed
    at = 0
    while True:
        root = tmp_path / f"kill_at_{at}"
        for step in (1, 2):
            save_checkpoint(root, step, keep=keep, **tiny_state(step))
        new_step = 2 if rewrite else 3
        with monkeypatch.context() as patch:
            switch = KillSwitch(patch, at)
            try:
                save_checkpoint(root, new_step, keep=keep, **tiny_state(new_step))
                finished = True
            except Killed:
                finished = False
        visible = list_checkpoints(root)
        assert visible, f"killed at operation {at}: no checkpoint left"
        for path in visible:
            load_checkpoint(path)  # every visible checkpoint is complete
        assert latest_step(root) in (2, new_step), (at, visible)
        # The next write clears what the kill left behind.
        save_checkpoint(root, 4, keep=keep, **tiny_state(4))
        names = sorted(p.name for p in root.iterdir())
        assert len(names) == keep and names[-1] == "step_00000004", (at, names)
        assert all(re.fullmatch(r"step_\d{8}", name) for name in names), (at, names)
        if finished:
            assert switch.count >= 8  # the kill points covered the whole write
            break
        at += 1


def test_interrupted_rewrite_is_found_under_its_replaced_name(tmp_path):
    """A kill between the two renames of a rewrite leaves only ``step_X.replaced``: still used."""
    save_checkpoint(tmp_path, 1, keep=1, **tiny_state(1))
    os.replace(tmp_path / "step_00000001", tmp_path / "step_00000001.replaced")
    (tmp_path / "step_00000001.tmp").mkdir()  # the unfinished new copy: ignored
    assert list_checkpoints(tmp_path) == [tmp_path / "step_00000001.replaced"]
    path, loaded = load_latest_checkpoint(tmp_path)
    assert path.name == "step_00000001.replaced" and loaded["state"]["step"] == 1
    save_checkpoint(tmp_path, 2, keep=2, **tiny_state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002"]


# ---------------------------------------------------------------------------------------------
# Corrupted files fail to load, naming the file.
# ---------------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "name, damage",
    [
        ("model.safetensors", lambda p: flip_byte(p, -5)),
        ("ema.safetensors", truncate),
        ("optimizer.pt", truncate),
        ("state.json", lambda p: p.write_text("{}")),
        ("rng.safetensors", lambda p: p.unlink()),
    ],
)
def test_corrupted_checkpoint_file_fails_verification_naming_it(tmp_path, name, damage):
    path = save_checkpoint(tmp_path, 1, **tiny_state(1))
    damage(path / name)
    with pytest.raises(CheckpointError, match=re.escape(str(path / name))):
        load_checkpoint(path)


def test_incomplete_or_damaged_manifest(tmp_path):
    path = save_checkpoint(tmp_path, 1, **tiny_state(1))
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is corrupted"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json: it is incomplete"):
        load_checkpoint(path)


def test_load_latest_falls_back_past_a_corrupted_checkpoint(tmp_path, caplog):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, **tiny_state(step))
    flip_byte(tmp_path / "step_00000002/model.safetensors", -5)
    path, loaded = load_latest_checkpoint(tmp_path)
    assert path.name == "step_00000001" and loaded["state"]["step"] == 1
    assert "step_00000002/model.safetensors is corrupted" in caplog.text
    flip_byte(tmp_path / "step_00000001/ema.safetensors", -5)
    with pytest.raises(CheckpointError, match="no checkpoint .* could be loaded"):
        load_latest_checkpoint(tmp_path)
    assert load_latest_checkpoint(tmp_path / "none") is None


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    path = tmp_path_factory.mktemp("pipeline")
    LumierePipeline.from_stunet(stunet).save_pretrained(path)
    return path


@pytest.fixture
def pipeline_copy(saved_pipeline, tmp_path) -> Path:
    return Path(shutil.copytree(saved_pipeline, tmp_path / "pipeline"))


WEIGHTS = "stunet/diffusion_pytorch_model.safetensors"


def test_saved_stunet_round_trips_with_checksums(pipeline_copy):
    assert json.loads((pipeline_copy / "stunet" / CHECKSUMS).read_text()).keys() == {
        "diffusion_pytorch_model.safetensors"
    }
    saved = load_file(pipeline_copy / WEIGHTS)
    loaded = STUNet.from_pretrained(pipeline_copy / "stunet").state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize("checksums", [True, False], ids=["with-checksums", "saved-without-checksums"])
@pytest.mark.parametrize("damage", [truncate, lambda p: flip_byte(p, 3)], ids=["truncated", "bad-header"])
def test_damaged_stunet_weights_name_the_file(pipeline_copy, checksums, damage):
    if not checksums:
        (pipeline_copy / "stunet" / CHECKSUMS).unlink()
    damage(pipeline_copy / WEIGHTS)
    with pytest.raises(CheckpointError, match=re.escape(str(pipeline_copy / WEIGHTS))):
        STUNet.from_pretrained(pipeline_copy / "stunet")
    with pytest.raises(CheckpointError, match=re.escape(str(pipeline_copy / WEIGHTS))):
        LumierePipeline.from_pretrained(pipeline_copy)


def test_silently_flipped_weight_is_caught_by_the_checksum(pipeline_copy):
    flip_byte(pipeline_copy / WEIGHTS, -5)  # a tensor value: still a valid safetensors file
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        LumierePipeline.from_pretrained(pipeline_copy)


@pytest.mark.parametrize(
    "key, edit",
    [
        ("unet_config.block_out_channels", lambda c: c["unet_config"].update(block_out_channels=[16, 48])),
        ("unet_config.layers_per_block", lambda c: c["unet_config"].update(layers_per_block=2)),
        ("temporal_attention_layers", lambda c: c.update(temporal_attention_layers=2)),
        ("temporal_kernel_size", lambda c: c.update(temporal_kernel_size=5)),
        ("noise_level_conditioning", lambda c: c.update(noise_level_conditioning=True)),
    ],
)
def test_config_that_does_not_match_the_weights_names_the_key(pipeline_copy, key, edit):
    config_path = pipeline_copy / "stunet" / "config.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"config.json does not match .* config key {key} "):
        LumierePipeline.from_pretrained(pipeline_copy)


def test_corrupted_text_encoder_config_names_the_file(pipeline_copy):
    (pipeline_copy / "text_encoder/text_encoder.json").write_text('{"kind": "mini')
    with pytest.raises(ValueError, match=r"text_encoder\.json is corrupted \(not valid JSON"):
        LumierePipeline.from_pretrained(pipeline_copy)


@pytest.mark.parametrize("name", ["model_index.json", "scheduler/scheduler_config.json"])
def test_corrupted_pipeline_json_names_the_file(pipeline_copy, name):
    (pipeline_copy / name).write_text('{"_class_name": "Lum')
    with pytest.raises(ValueError, match=re.escape(name)):
        LumierePipeline.from_pretrained(pipeline_copy)


def test_cli_reports_a_corrupted_model_with_exit_code_1(tmp_path, capsys):
    from lumiere.cli import main
    from lumiere.models.presets import STUNET_PRESETS, build_unet2d
    from lumiere.models.stunet import STUNet
    from lumiere.pipelines import LumierePipeline

    model = tmp_path / "model"
    LumierePipeline.from_stunet(
        STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    ).save_pretrained(model)
    weights = model / "stunet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    code = main(
        ["generate", "a red circle", "--model", str(model), "-o", str(tmp_path / "a.mp4"), "--steps", "1"]
    )
    assert code == 1
    assert "diffusion_pytorch_model.safetensors" in capsys.readouterr().err
