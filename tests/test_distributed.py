"""Training past one process: ``lumiere train`` under FSDP and DeepSpeed ZeRO on 2 CPU processes (gloo).

What runs here and what does not (torch 2.13 CPU, Accelerate 1.16, DeepSpeed 0.19.8;
docs/distributed.md has the details):

- PyTorch level: a tiny STUNet sharded with ``fully_shard`` (FSDP2) at the wrap unit of
  ``configs/accelerate/fsdp.yaml`` (its Space-Time down/mid/up blocks): one step on 2 processes,
  half of a global batch each, equals one unsharded step on the whole batch (loss and weights).
- The training loop: ``accelerate launch --config_file configs/accelerate/fsdp.yaml
  --num_processes 2 -m lumiere.cli train CONFIG``. Accelerate does not turn FSDP on without a GPU
  (it runs plain data parallel), so ``lumiere.distributed.Placement`` shards the STUNet itself
  with the config file's settings; the same run under ``ddp.yaml`` is the reference: same losses
  and weights (DDP's step is the 1-process step on the global batch), each process's checkpoint
  file holds half of the weights, a SIGKILL after a checkpoint then ``--resume`` ends bit for bit
  where the uninterrupted run ends, and the exported model (gathered whole) generates the clip of
  the DDP-trained one. bf16 autocast runs under the sharded loop.
- DeepSpeed ZeRO-2 and ZeRO-3: ``accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml
  ... -m lumiere.cli train CONFIG``; Accelerate runs the launch as plain data parallel on CPU, and
  ``lumiere.distributed_zero`` drives DeepSpeed's engine itself with the file's settings: the same
  losses, gradient norms (clipped) and EMA weights as DDP, each process's checkpoint file holds half
  of the master weights, their EMA and AdamW moments, a SIGKILL then ``--resume`` ends bit for bit
  where the uninterrupted run ends, the export generates the DDP-trained clip, bf16 autocast runs.
  These skip where DeepSpeed is not installed. On GPUs: bench/deepspeed_gpu_check.sh.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

# One SGD step of a tiny STUNet (Sec. 3.1) on a fixed global batch of 4 clips [4, 3, 4, 16, 16]:
# whole on one process (rank 0 alone, no collective involved), then on 2 processes (each takes 2
# clips) sharded by FSDP2 and, where DeepSpeed is installed, by DeepSpeed's ZeRO-2 and ZeRO-3
# engine. SGD, not AdamW: Adam's first step is lr * sign(grad), which turns float-rounding
# differences of near-zero gradients into full steps.
STEP_SCRIPT = """
import sys, torch
from contextlib import nullcontext
import torch.distributed as dist
from safetensors.torch import save_file
from lumiere.models.presets import TEXT_DIM, build_unet2d
from lumiere.models.stunet import STUNet, SpaceTimeDownBlock, SpaceTimeMidBlock, SpaceTimeUpBlock

out = sys.argv[1]
try:
    import deepspeed
except ImportError:
    deepspeed = None
if deepspeed is not None:
    deepspeed.init_distributed(dist_backend="gloo")  # the torch process group, shared with FSDP
else:
    dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
generator = torch.Generator().manual_seed(1)
clips = torch.randn(4, 3, 4, 16, 16, generator=generator)
timesteps = torch.tensor([10, 200, 500, 900])
text = torch.randn(4, 6, TEXT_DIM, generator=generator)
target = torch.randn(clips.shape, generator=generator)


def fresh_model():
    torch.manual_seed(0)
    return STUNet.from_unet2d(build_unet2d("tiny"))


def whole(state):
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone().contiguous()
            for k, v in state.items()}


def step(mode):
    model = fresh_model()
    lo, hi, engine = rank * 4 // world, (rank + 1) * 4 // world, model
    if mode == "single":
        lo, hi = 0, 4
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, (SpaceTimeDownBlock, SpaceTimeMidBlock, SpaceTimeUpBlock)):
                fully_shard(module)
        fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # over the parameters as placed
    if mode.startswith("zero"):
        config = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 4, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": int(mode[-1])}, "zero_allow_untested_optimizer": True}
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    loss = (engine(clips[lo:hi], timesteps[lo:hi], text[lo:hi]).sample - target[lo:hi]).pow(2).mean()
    if mode.startswith("zero"):
        engine.backward(loss)  # ZeRO reduces (and partitions) the gradients, averaged over processes
        engine.step()
    else:
        loss.backward()  # FSDP averages the gradients over processes: the global batch's mean loss
        optimizer.step()
    gather = nullcontext()
    if mode == "zero3":  # the partitioned parameters, whole for the state dict
        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    with gather:
        state = whole(model.state_dict())
    losses = [torch.zeros(1) for _ in range(world)]
    if mode == "single":
        losses = [loss.detach().reshape(1)]
    else:
        dist.all_gather(losses, loss.detach().reshape(1))
    if rank == 0:
        save_file({**state, "loss": torch.cat(losses).mean().reshape(1)}, f"{out}/{mode}.safetensors")


if rank == 0:
    save_file(whole(fresh_model().state_dict()), f"{out}/initial.safetensors")
    step("single")
for mode in ["fsdp"] + (["zero2", "zero3"] if deepspeed is not None else []):
    step(mode)
dist.barrier()
dist.destroy_process_group()
"""


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PORT_TAKEN = ("Address already in use", "EADDRINUSE", "is already in use")


def _run(command, cwd):
    """Run a launch to its end. ``--main_process_port 0`` picks a free port, which another
    process may take before the launch binds it: a launch that failed on that alone runs again."""
    for _attempt in range(3):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV, cwd=cwd)
        if completed.returncode == 0 or not any(text in completed.stderr for text in PORT_TAKEN):
            break
    assert completed.returncode == 0, completed.stderr[-3000:]


def accelerate_launch(*arguments: str) -> list[str]:
    """``accelerate launch`` on 2 CPU processes (gloo), fp32, on a free port."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *arguments,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """The weights and loss after one step: whole, FSDP2, ZeRO-2, ZeRO-3 (``STEP_SCRIPT``)."""
    root = tmp_path_factory.mktemp("steps")
    script = root / "step.py"
    script.write_text(STEP_SCRIPT)
    _run(accelerate_launch("--multi_gpu", str(script), str(root)), root)
    return root


def assert_step_equal(root: Path, mode: str) -> None:
    single, sharded = load_file(root / "single.safetensors"), load_file(root / f"{mode}.safetensors")
    torch.testing.assert_close(sharded.pop("loss"), single.pop("loss"), rtol=1e-5, atol=1e-6)
    initial = load_file(root / "initial.safetensors")
    assert single.keys() == sharded.keys() == initial.keys()
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-5)
    moved = sum(not torch.equal(single[key], initial[key]) for key in single)
    assert moved > len(single) // 2  # the step changed most weights, so equal weights say something


def test_fsdp_step_on_two_processes_equals_one_process_step(steps):
    assert_step_equal(steps, "fsdp")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_step_on_two_processes_equals_one_process_step(steps, stage):
    """DeepSpeed's engine itself runs on CPU processes (gloo); what Accelerate does not do there
    (``DEEPSPEED_UNDER_ACCELERATE_ON_CPU``) lumiere does (``lumiere.distributed_zero``)."""
    pytest.importorskip("deepspeed")
    assert_step_equal(steps, f"zero{stage}")


# What a ZeRO launch through Accelerate's own DeepSpeed path meets on CPU, and why lumiere drives the
# engine itself (docs/distributed.md).
DEEPSPEED_UNDER_ACCELERATE_ON_CPU = (
    "DeepSpeed 0.19.8 under Accelerate 1.16 on CPU (accelerate launch --use_deepspeed --zero_stage 2 "
    "--num_processes 2): Accelerate sees num_processes=1 and process_index=0 on both processes while "
    "DeepSpeed sees world_size 2, and deepspeed.initialize stops with 'AssertionError: Check batch related "
    "parameters. train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size "
    "2 != 2 * 1 * 2' (with train_batch_size set the step runs, but both processes read rank 0's data)"
)


def test_a_deepspeed_launch_is_placed_under_zero(monkeypatch):
    """A launch with a ZeRO config is recognised from what accelerate launch sets, also where
    Accelerate runs it as plain data parallel (CPU); FSDP's and DDP's stay as they were."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from lumiere.distributed import Placement

    pytest.importorskip("deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets for a ZeRO config
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    accelerator = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    placement = Placement.of(accelerator)
    assert (placement.kind, placement.name, placement.sharded) == ("zero", "zero3", True)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert Placement.of(accelerator).kind == "replicated"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert Placement.of(accelerator).shards_itself


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1", "zero_stage 1"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu", "offload_optimizer_device cpu"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme", "offload_param_device nvme"),
        ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true", "zero3_init_flag true"),
        ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4", "gradient_accumulation_steps 4"),
        ("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json", "deepspeed_config_file"),
    ],
)
def test_zero_settings_this_path_does_not_run_are_refused_by_key(variable, value, key):
    from lumiere.distributed_zero import ZeroSettings

    launch_env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", variable: value}
    with pytest.raises(ValueError, match=f"deepspeed_config.{key}"):
        ZeroSettings.from_launch(launch_env)
    settings = ZeroSettings.from_launch({"ACCELERATE_GRADIENT_CLIPPING": "1.0"})
    assert settings.deepspeed_config(2, 4, 1.0)["train_batch_size"] == 8
    with pytest.raises(ValueError, match=r"gradient_clipping 1.0 .* optim.grad_clip 0.5"):
        settings.deepspeed_config(2, 4, 0.5)


def test_resuming_a_sharded_checkpoint_otherwise_names_the_checkpoint():
    from lumiere.train import check_layout

    zero3 = {"processes": 2, "placement": "zero3"}
    check_layout(zero3, Path("ckpt"), "zero3", 2)
    with pytest.raises(
        ValueError, match=r"checkpoint ckpt was written by 2 DeepSpeed ZeRO-3 processes.* 4 processes"
    ):
        check_layout(zero3, Path("ckpt"), "zero3", 4)
    with pytest.raises(ValueError, match=r"checkpoint ckpt was written by 2 DeepSpeed ZeRO-3 .* under FSDP"):
        check_layout(zero3, Path("ckpt"), "fsdp", 2)
    with pytest.raises(ValueError, match=r"checkpoint ckpt holds the shards of 2 FSDP processes"):
        check_layout({"processes": 2}, Path("ckpt"), "replicated", 2)  # FSDP's, written before names
    with pytest.raises(ValueError, match=r"checkpoint ckpt was written whole"):
        check_layout({}, Path("ckpt"), "zero2", 2)


# ---------------------------------------------------------------------------------------------
# lumiere train on 2 processes: FSDP against DDP, kill and resume, the export.
# ---------------------------------------------------------------------------------------------


GRAD_CLIP = 0.05  # below the tiny run's gradient norms (0.03-0.15): most steps are clipped


def launch(accelerate_config: str, train_config: Path, *options: str) -> list[str]:
    """``accelerate launch --config_file configs/accelerate/NAME.yaml ... -m lumiere.cli train``
    on 2 CPU processes (fp32 unless the training config says otherwise). A ZeRO file's
    ``gradient_clipping`` is set to the training config's (``GRAD_CLIP``), as it must be."""
    config_file = REPO / "configs" / "accelerate" / f"{accelerate_config}.yaml"
    clipping = ["--gradient_clipping", str(GRAD_CLIP)] if accelerate_config.startswith("deepspeed") else []
    return accelerate_launch(
        "--config_file",
        str(config_file),
        *clipping,
        "-m",
        "lumiere.cli",
        "train",
        str(train_config),
        *options,
    )


def write_config(root: Path, name: str, **overrides) -> Path:
    """A tiny stage-stunet config (inflated from ``root/unet``), 4 steps, a checkpoint every 2."""
    config = {
        "stage": "stunet",
        "output_dir": str(root / name),
        "model": {"init_from": str(root / "unet")},
        "data": {"resolution": 16, "num_frames": 4},
        "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 1e-3, "grad_clip": GRAD_CLIP},
        "log_every": 1,
        "checkpoint_every": 2,
        "sample_steps": 2,
        "log_with": [],
        **overrides,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run: Path, key: str = "loss") -> list[float]:
    """The loss (or ``key``) of each step (a step logged again after a resume: its last line)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return list({record["step"]: record[key] for record in records}.values())


def exported(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "stunet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4 steps under DDP, under FSDP (then its newest checkpoint exported with --export
    under the same launch), and under FSDP SIGKILLed after its step-2 checkpoint then resumed
    with --resume."""
    from lumiere.models.presets import build_unet2d

    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    build_unet2d("tiny").save_pretrained(root / "unet")
    for name, accelerate_config in (("ddp", "ddp"), ("fsdp", "fsdp")):
        _run(launch(accelerate_config, write_config(root, name)), root)
    _run(launch("fsdp", root / "fsdp.yaml", "--export", str(root / "fsdp_export")), root)
    return root, kill_and_resume("fsdp", root, "killed")


def kill_and_resume(accelerate_config: str, root: Path, name: str) -> bool:
    """Launch the 4 steps, SIGKILL the launcher and both processes once the step-2 checkpoint is
    there, then run again with --resume; whether the kill fell between that checkpoint and the end."""
    command = launch(accelerate_config, write_config(root, name))
    process = subprocess.Popen(
        command,
        env=ENV,
        cwd=root,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_checkpoint = root / name / "checkpoints" / "step_00000002"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both training processes
    process.wait()
    # Killed between its first checkpoint and its end: the resume below starts from step 2.
    killed_in_between = first_checkpoint.exists() and not (root / name / "model").exists()
    _run([*command, "--resume"], root)
    return killed_in_between


def test_fsdp_training_equals_ddp_training_and_shards_the_weights(runs):
    """Under fsdp.yaml each process holds half of the weights, and the 4 steps (AdamW, clipping,
    EMA) give DDP's losses and weights: DDP's step is the 1-process step on the global batch."""
    root, _ = runs
    assert losses(root / "fsdp") == pytest.approx(losses(root / "ddp"), rel=1e-5)
    ddp, fsdp = exported(root / "ddp"), exported(root / "fsdp")
    assert ddp.keys() == fsdp.keys()
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-5, atol=1e-6)

    checkpoint = root / "fsdp" / "checkpoints" / "step_00000004"
    assert json.loads((checkpoint / "state.json").read_text())["processes"] == 2
    whole = sum(value.numel() for value in ddp.values())
    for rank in (0, 1):
        shard = load_file(checkpoint / f"shard_{rank:05d}.safetensors")
        held = sum(v.numel() for k, v in shard.items() if k.startswith("model."))
        assert 0.45 * whole < held < 0.55 * whole, (rank, held, whole)


def test_sharded_checkpoint_kill_and_resume_equals_the_uninterrupted_run(runs):
    root, killed_in_between = runs
    assert killed_in_between
    whole, resumed = exported(root / "fsdp"), exported(root / "killed")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # the EMA weights, bit for bit
    for rank in (0, 1):  # the last checkpoint: weights, EMA and AdamW moments of each process
        name = f"checkpoints/step_00000004/shard_{rank:05d}.safetensors"
        a, b = load_file(root / "fsdp" / name), load_file(root / "killed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(root / "killed") == losses(root / "fsdp")


def generate(model_dir: Path) -> torch.Tensor:
    """The clip [1, 4, 16, 16, 3] of an exported model folder loaded on one process (seed 3, 3 steps)."""
    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(3)
    return pipe("a red circle", num_frames=4, height=16, width=16, num_inference_steps=3,
                generator=generator, output_type="pt").frames  # fmt: skip


def test_fsdp_export_generates_the_clip_of_the_ddp_trained_model(runs):
    """The export gathered from the shards is a whole model folder that loads on one process."""
    root, _ = runs
    ddp, fsdp = generate(root / "ddp" / "model"), generate(root / "fsdp" / "model")
    assert ddp.shape == (1, 4, 16, 16, 3)
    torch.testing.assert_close(fsdp, ddp, rtol=0, atol=1e-4)


def test_a_sharded_checkpoint_exports_as_the_run_did(runs):
    """``lumiere train CONFIG --export DIR`` under the run's launch gathers the EMA shards of its
    newest checkpoint into the model the run's end exported, bit for bit."""
    root, _ = runs
    run = exported(root / "fsdp")
    again = load_file(root / "fsdp_export" / "stunet" / "diffusion_pytorch_model.safetensors")
    assert run.keys() == again.keys() and all(torch.equal(run[k], again[k]) for k in run)


def test_bf16_autocast_runs_under_the_sharded_loop(tmp_path):
    torch.manual_seed(0)
    from lumiere.models.presets import build_unet2d

    build_unet2d("tiny").save_pretrained(tmp_path / "unet")
    config = write_config(
        tmp_path, "bf16", mixed_precision="bf16", optim={"batch_size": 1, "max_steps": 2, "warmup_steps": 1}
    )
    _run(launch("fsdp", config), tmp_path)
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "bf16"))))
    assert exported(tmp_path / "bf16")["conv_in.weight"].dtype == torch.float32  # fp32 weights, bf16 compute


# ---------------------------------------------------------------------------------------------
# lumiere train under DeepSpeed ZeRO-2 and ZeRO-3 (lumiere drives the engine): against DDP, kill
# and resume, the export, bf16.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_runs(runs):
    """The DDP run's 4 steps under deepspeed_zero2.yaml and deepspeed_zero3.yaml, and under each
    SIGKILLed after its step-2 checkpoint then resumed (whether each kill fell in between, by stage)."""
    pytest.importorskip("deepspeed")
    root, _ = runs
    killed_in_between = {}
    for stage in (2, 3):
        _run(launch(f"deepspeed_zero{stage}", write_config(root, f"zero{stage}")), root)
        killed_in_between[stage] = kill_and_resume(f"deepspeed_zero{stage}", root, f"zero{stage}_killed")
    return root, killed_in_between


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_training_equals_ddp_training_and_partitions_the_state(zero_runs, stage):
    """4 AdamW steps (warm-up, clipping to the global norm, EMA) under ZeRO give DDP's losses,
    gradient norms and exported EMA weights. Tolerance as for FSDP: the gradients are reduce-
    scattered into partitions and AdamW runs over one flat tensor per process, which may round
    differently from DDP's all-reduce and per-weight AdamW (seen: 1.2e-7 and 1.6e-7)."""
    root, _ = zero_runs
    run = root / f"zero{stage}"
    assert losses(run) == pytest.approx(losses(root / "ddp"), rel=1e-5)
    norms = losses(root / "ddp", "grad_norm")
    assert losses(run, "grad_norm") == pytest.approx(norms, rel=1e-5)
    assert sum(norm > GRAD_CLIP for norm in norms) >= 2  # clipping changed steps: its norm is checked
    ddp, zero = exported(root / "ddp"), exported(run)
    assert ddp.keys() == zero.keys()
    for key in ddp:
        torch.testing.assert_close(zero[key], ddp[key], rtol=1e-5, atol=1e-6)

    checkpoint = run / "checkpoints" / "step_00000004"
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["processes"], state["placement"]) == (2, f"zero{stage}")
    trained = sum(
        v.numel() for v in load_file(root / "ddp/checkpoints/step_00000004/ema.safetensors").values()
    )
    for rank in (0, 1):  # each process: half of the master weights, of their EMA, of each AdamW moment
        shard = load_file(checkpoint / f"shard_{rank:05d}.safetensors")
        for key in (
            "model.zero_partition_0",
            "ema.zero_partition_0",
            "optimizer.0.exp_avg",
            "optimizer.0.exp_avg_sq",
        ):
            held = shard[key].numel()
            assert 0.5 * trained <= held < 0.55 * trained, (rank, key, held, trained)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_checkpoint_kill_and_resume_equals_the_uninterrupted_run(zero_runs, stage):
    root, killed_in_between = zero_runs
    assert killed_in_between[stage]
    run, killed = root / f"zero{stage}", root / f"zero{stage}_killed"
    whole, resumed = exported(run), exported(killed)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # the EMA weights, bit for bit
    for rank in (0, 1):  # the last checkpoint: master partitions, EMA and AdamW moments of each process
        name = f"checkpoints/step_00000004/shard_{rank:05d}.safetensors"
        a, b = load_file(run / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(killed) == losses(run)


def test_zero_export_generates_the_clip_of_the_ddp_trained_model(zero_runs):
    """The export gathered from the ZeRO partitions loads on one process as an ordinary pipeline."""
    root, _ = zero_runs
    ddp = generate(root / "ddp" / "model")
    for stage in (2, 3):
        torch.testing.assert_close(generate(root / f"zero{stage}" / "model"), ddp, rtol=0, atol=1e-4)


def test_bf16_autocast_runs_under_zero3(tmp_path):
    pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    from lumiere.models.presets import build_unet2d

    build_unet2d("tiny").save_pretrained(tmp_path / "unet")
    config = write_config(
        tmp_path,
        "bf16",
        mixed_precision="bf16",
        optim={"batch_size": 1, "max_steps": 2, "warmup_steps": 1, "grad_clip": GRAD_CLIP},
    )
    _run(launch("deepspeed_zero3", config), tmp_path)
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "bf16"))))
    assert all(0 < norm < float("inf") for norm in losses(tmp_path / "bf16", "grad_norm"))
    assert exported(tmp_path / "bf16")["conv_in.weight"].dtype == torch.float32  # fp32 weights, bf16 compute
