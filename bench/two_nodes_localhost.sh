#!/usr/bin/env bash
# Several machines, tried on one (issue 32, item 3): `lumiere train` as two one-process "nodes" on
# localhost (accelerate launch --num_machines 2 --machine_rank R --main_process_ip 127.0.0.1, the
# two ranks started at once, as on two machines), against the same training as one 2-process launch
# on one machine, under configs/accelerate/ddp.yaml and deepspeed_zero3.yaml. The exported weights
# must be equal: the script prints the largest difference per file and exits 1 if any is not 0.
#
#   bash bench/two_nodes_localhost.sh            # about 2 minutes on 2 CPU cores
#
# ZeRO across machines needs --deepspeed_multinode_launcher standard (Accelerate's default, pdsh,
# starts the ranks over ssh from machine 0). Config: configs/smoke/tiny.yaml, 4 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

for accelerate_config in ddp deepspeed_zero3; do
  multinode=()
  [ "$accelerate_config" != ddp ] && multinode=(--deepspeed_multinode_launcher standard)
  for layout in one_machine two_nodes; do
    run="$root/${accelerate_config}_$layout"
    sed -e "s#output_dir: runs/tiny#output_dir: $run#" -e "s#max_steps: 20#max_steps: 4#" \
      -e "s#checkpoint_every: 10#checkpoint_every: 2#" configs/smoke/tiny.yaml > "$run.yaml"
    launch=("$python" -m accelerate.commands.launch --config_file "configs/accelerate/$accelerate_config.yaml"
      --mixed_precision no --dynamo_backend no --num_processes 2)
    if [ "$layout" = one_machine ]; then
      OMP_NUM_THREADS=1 "${launch[@]}" --num_machines 1 --main_process_port 29611 \
        -m lumiere.cli train "$run.yaml" > "$run.log" 2>&1
    else
      for rank in 0 1; do
        OMP_NUM_THREADS=1 "${launch[@]}" --num_machines 2 --machine_rank "$rank" \
          --main_process_ip 127.0.0.1 --main_process_port 29612 "${multinode[@]}" \
          -m lumiere.cli train "$run.yaml" > "$run.rank$rank.log" 2>&1 &
      done
      wait
    fi
  done
done

"$python" - "$root" <<'PY'
import sys
from pathlib import Path

from safetensors.torch import load_file

root, failed = Path(sys.argv[1]), False
for accelerate_config in ("ddp", "deepspeed_zero3"):
    one = root / f"{accelerate_config}_one_machine" / "model"
    files = sorted(one.rglob("*.safetensors"))
    if not files:
        sys.exit(f"{accelerate_config}: no exported model in {one}")
    for path in files:
        other = root / f"{accelerate_config}_two_nodes" / "model" / path.relative_to(one)
        a, b = load_file(path), load_file(other)
        difference = max((a[k] - b[k]).abs().max().item() for k in a) if a.keys() == b.keys() else float("inf")
        failed |= difference != 0
        print(f"{accelerate_config}: {path.relative_to(one)}: {len(a)} tensors, largest difference {difference}")
sys.exit(1 if failed else 0)
PY
