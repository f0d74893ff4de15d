#!/bin/bash
# One-command check of DeepSpeed ZeRO-2 and ZeRO-3 with lumiere's training loop, for a machine with
# NVIDIA GPUs (DeepSpeed does not run under Accelerate on CPU: configs/accelerate/README.md).
#   bash bench/deepspeed_gpu_check.sh            # all GPUs; OUT=/tmp/ds_check by default
# For each of plain (DDP), ZeRO-2 and ZeRO-3 it trains the tiny preset for 4 steps with the same
# seed and per-process batch, writes the final weights, then compares them with the plain run's.
# Exit 0: every run finished and ZeRO's weights equal DDP's (fp32, within 1e-4).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-/tmp/ds_check}
NGPU=${NGPU:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}
[ "$NGPU" -ge 1 ] || { echo "no GPU visible: nothing to check"; exit 2; }
"$PYTHON" -c 'import deepspeed' 2>/dev/null || "$PYTHON" -m pip install -q deepspeed
rm -rf "$OUT" && mkdir -p "$OUT"
cat > "$OUT/step.py" <<'PY'
import sys, torch
from accelerate import Accelerator
from safetensors.torch import save_file
from lumiere.config import config_from_dict
from lumiere.train import train

out, batch = sys.argv[1], 2
accelerator = Accelerator()
plugin = accelerator.state.deepspeed_plugin
if plugin is not None:  # prepare() gets no DataLoader: DeepSpeed is told the per-process batch
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch
config = config_from_dict({
    "stage": "t2i", "output_dir": out, "model": {"preset": "tiny"}, "data": {"resolution": 16},
    "optim": {"batch_size": batch, "max_steps": 4, "warmup_steps": 1, "lr": 1e-3},
    "checkpoint_every": 2, "sample_steps": 1,
})
result = train(config, accelerator=accelerator)
state = accelerator.get_state_dict(accelerator._models[0]) if accelerator._models else result.model.state_dict()
if accelerator.is_main_process:
    save_file({k: v.float().cpu().contiguous() for k, v in state.items()}, f"{out}/weights.safetensors")
    print("final loss", result.final_loss, accelerator.distributed_type)
PY
status=0
for name in ddp deepspeed_zero2 deepspeed_zero3; do
  echo "== $name on $NGPU GPU(s)"
  if ! "$PYTHON" -m accelerate.commands.launch --config_file "configs/accelerate/$name.yaml" \
      --num_processes "$NGPU" --mixed_precision no --main_process_port 0 \
      "$OUT/step.py" "$OUT/$name" > "$OUT/$name.log" 2>&1; then
    echo "FAILED: $name (last lines of $OUT/$name.log):"; tail -n 25 "$OUT/$name.log"; status=1
  else
    grep "final loss" "$OUT/$name.log"
  fi
done
"$PYTHON" - "$OUT" <<'PY' || status=1
import sys, pathlib, torch
from safetensors.torch import load_file
out = pathlib.Path(sys.argv[1])
reference = load_file(out / "ddp/weights.safetensors")
for name in ("deepspeed_zero2", "deepspeed_zero3"):
    path = out / name / "weights.safetensors"
    if not path.is_file():
        print(f"{name}: no weights"); sys.exit(1)
    weights = load_file(path)
    worst = max((weights[k] - reference[k]).abs().max().item() for k in reference)
    print(f"{name}: largest weight difference from DDP {worst:.2e}")
    if weights.keys() != reference.keys() or worst > 1e-4:
        sys.exit(1)
PY
echo "exit $status"; exit $status
