#!/bin/bash
# One-command check of `lumiere train` under every config of configs/accelerate, for a machine with
# NVIDIA GPUs (what CPU processes cannot show: Accelerate's own FSDP2 plugin, and the ZeRO path under
# a real DistributedType.DEEPSPEED with NCCL; see docs/distributed.md).
#   bash bench/deepspeed_gpu_check.sh            # all GPUs; OUT=/tmp/dist_check by default
# A tiny STUNet (inflated from the tiny image preset) trains 4 steps, a checkpoint every 2, fp32:
#   ddp                   the reference
#   fsdp                  Accelerate's FSDP2 plugin: exported EMA weights equal DDP's (within 1e-4)
#   zero2, zero3          deepspeed_zero2.yaml / deepspeed_zero3.yaml, lumiere driving DeepSpeed's
#                         engine: exported EMA weights equal DDP's (within 1e-4)
#   fsdp_killed,          SIGKILL after the step-2 checkpoint, then --resume: equal to the
#   zero3_killed          uninterrupted fsdp / zero3 run (within 1e-6)
#   fsdp_bf16, zero3_bf16 the training config's mixed_precision: bf16: finite losses, an export
# Exit 0: all of the above held. With one GPU the runs are single-process (sharded over one rank).
# Needs deepspeed (pip install deepspeed==0.19.8).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-/tmp/dist_check}
NGPU=${NGPU:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}
[ "$NGPU" -ge 1 ] || { echo "no GPU visible: nothing to check"; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
"$PYTHON" - "$OUT" <<'PY'
import sys, pathlib, torch, yaml
from lumiere.models.presets import build_unet2d
out = pathlib.Path(sys.argv[1])
torch.manual_seed(0)
build_unet2d("tiny").save_pretrained(out / "unet")
for name in ("ddp", "fsdp", "zero2", "zero3", "fsdp_killed", "zero3_killed", "fsdp_bf16", "zero3_bf16"):
    config = {
        "stage": "stunet", "output_dir": str(out / name), "model": {"init_from": str(out / "unet")},
        "data": {"resolution": 16, "num_frames": 4},
        "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 1e-3},
        "log_every": 1, "checkpoint_every": 2, "sample_steps": 2, "log_with": [],
        "mixed_precision": "bf16" if name.endswith("bf16") else "no",
    }
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config))
PY
config_of() {  # RUN NAME -> the accelerate config file's name
  case "$1" in ddp) echo ddp ;; fsdp*) echo fsdp ;; zero2*) echo deepspeed_zero2 ;; zero3*) echo deepspeed_zero3 ;; esac
}
launch() {  # RUN_NAME [--resume]
  "$PYTHON" -m accelerate.commands.launch --config_file "configs/accelerate/$(config_of "$1").yaml" \
    --num_processes "$NGPU" --main_process_port 0 -m lumiere.cli train "$OUT/$1.yaml" "${@:2}"
}
status=0
for name in ddp fsdp zero2 zero3 fsdp_bf16 zero3_bf16; do
  echo "== lumiere train under $(config_of "$name").yaml ($name) on $NGPU GPU(s)"
  launch "$name" > "$OUT/$name.log" 2>&1 || { echo "FAILED: $name"; tail -n 25 "$OUT/$name.log"; status=1; }
done
for name in fsdp_killed zero3_killed; do
  echo "== $name: killed after its step-2 checkpoint, then --resume"
  # its own session, so that one kill reaches the launcher and every training process
  setsid "$PYTHON" -m accelerate.commands.launch --config_file "configs/accelerate/$(config_of "$name").yaml" \
    --num_processes "$NGPU" --main_process_port 0 -m lumiere.cli train "$OUT/$name.yaml" > "$OUT/$name.log" 2>&1 &
  pid=$!
  while [ ! -d "$OUT/$name/checkpoints/step_00000002" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  [ -d "$OUT/$name/model" ] && echo "note: the run ended before the kill (resume then re-exports)"
  launch "$name" --resume >> "$OUT/$name.log" 2>&1 || { echo "FAILED: resume"; tail -n 25 "$OUT/$name.log"; status=1; }
done
"$PYTHON" - "$OUT" <<'PY' || status=1
import json, math, sys, pathlib, torch
from safetensors.torch import load_file
out = pathlib.Path(sys.argv[1])
def weights(name):
    return load_file(out / name / "model" / "stunet" / "diffusion_pytorch_model.safetensors")
failed = False
checks = [("fsdp", "ddp", 1e-4), ("zero2", "ddp", 1e-4), ("zero3", "ddp", 1e-4),
          ("fsdp_killed", "fsdp", 1e-6), ("zero3_killed", "zero3", 1e-6)]
for name, against_name, tolerance in checks:
    try:
        got, against = weights(name), weights(against_name)
    except OSError as error:
        print(f"{name}: no export ({error}): FAILED")
        failed = True
        continue
    worst = max((got[k] - against[k]).abs().max().item() for k in against)
    ok = got.keys() == against.keys() and worst <= tolerance
    print(f"{name} against {against_name}: largest exported-weight difference {worst:.2e} "
          f"(at most {tolerance:.0e}): {'ok' if ok else 'FAILED'}")
    failed |= not ok
for name in ("fsdp_bf16", "zero3_bf16"):
    metrics = out / name / "metrics.jsonl"
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    ok = (out / name / "model").is_dir() and bool(losses) and all(math.isfinite(x) for x in losses)
    print(f"{name}: losses {[round(x, 4) for x in losses]}, export {'written' if ok else 'MISSING'}")
    failed |= not ok
sys.exit(1 if failed else 0)
PY
echo "exit $status"; exit $status
