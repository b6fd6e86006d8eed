#!/bin/bash
#SBATCH --no-requeue
#SBATCH --job-name="vllm-slurm-gpu"
#SBATCH --output=_scheduler-stdout.txt
#SBATCH --error=_scheduler-stderr.txt
#SBATCH --partition=gpu
#SBATCH --account=proj-md-1234
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --mem=256000
#SBATCH --gres=gpu:4

# mdagent llm serve: endpoint slurm-gpu, model Qwen/Qwen2.5-Coder-32B-Instruct
module load apptainer/1.3
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
export APPTAINERENV_VLLM_API_KEY="$(cat .api-key)"
export APPTAINERENV_PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
printf '{"node": "%s", "port": %s}\n' "$(hostname)" "$PORT" > mdagent-endpoint.json

"apptainer" "exec" "--nv" "--bind" "/scratch/jdoe/hf:/hf" "--env" "HF_HOME=/hf" "/apps/containers/mdagent-vllm.sif" "vllm" "serve" "Qwen/Qwen2.5-Coder-32B-Instruct" "--tensor-parallel-size" "4" "--max-model-len" "32768" "--middleware" "model_guard.RequireKey" "--host" "127.0.0.1" "--port" "$PORT"  > 'vllm.log' 2>&1
