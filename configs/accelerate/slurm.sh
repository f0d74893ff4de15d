#!/bin/bash
# lumiere train on several machines under SLURM: one task per node, each starting its node's
# processes with `accelerate launch` (configs/accelerate/README.md).
#   sbatch --nodes 4 configs/accelerate/slurm.sh configs/accelerate/fsdp.yaml configs/recipe/02_stunet.yaml
#SBATCH --job-name=lumiere-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
set -euo pipefail
ACCELERATE_CONFIG=${1:?usage: sbatch --nodes N slurm.sh ACCELERATE_CONFIG TRAIN_CONFIG [lumiere train options]}
TRAIN_CONFIG=${2:?usage: sbatch --nodes N slurm.sh ACCELERATE_CONFIG TRAIN_CONFIG [lumiere train options]}
shift 2
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
# DeepSpeed files: each node starts its own processes (Accelerate's default for them, pdsh, would
# start every node's from node 0 over ssh). srun passes the variable on to every node.
export MULTINODE_LAUNCHER=""
case "$ACCELERATE_CONFIG" in *deepspeed*) MULTINODE_LAUNCHER="--deepspeed_multinode_launcher standard" ;; esac

# SLURM_NODEID is each node's rank; the single quotes let every node read its own.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch \
  --config_file "$0" \
  --num_machines "$SLURM_NNODES" \
  --num_processes "$(( SLURM_NNODES * $1 ))" \
  --machine_rank "$SLURM_NODEID" \
  --main_process_ip "$2" \
  --main_process_port "$3" \
  --rdzv_backend static $MULTINODE_LAUNCHER \
  -m lumiere.cli train "$4" "${@:5}"' \
  "$ACCELERATE_CONFIG" "$GPUS_PER_NODE" "$MAIN_HOST" "$MAIN_PORT" "$TRAIN_CONFIG" "$@"
