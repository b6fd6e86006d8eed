#!/bin/bash
#PBS -r n
#PBS -m n
#PBS -N vllm-pbspro-gpu
#PBS -o _scheduler-stdout.txt
#PBS -e _scheduler-stderr.txt
#PBS -q gpu
#PBS -A proj-md-1234
#PBS -l walltime=04:00:00
#PBS -l select=1:mpiprocs=1:ncpus=8:mem=65536000kb:ngpus=1
cd "$PBS_O_WORKDIR"


# mdagent llm serve: endpoint pbspro-gpu, model /scratch/jdoe/models/Qwen2.5-Coder-7B-Instruct
module load cuda/12.8
source /apps/vllm/0.10/bin/activate
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
export VLLM_API_KEY="$(cat .api-key)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
printf '{"node": "%s", "port": %s}\n' "$(hostname)" "$PORT" > mdagent-endpoint.json

"vllm" "serve" "/scratch/jdoe/models/Qwen2.5-Coder-7B-Instruct" "--middleware" "model_guard.RequireKey" "--host" "127.0.0.1" "--port" "$PORT"  > 'vllm.log' 2>&1
