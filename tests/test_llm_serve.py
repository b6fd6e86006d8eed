"""The model side for real: the shared `vllm serve` fixture (CPU, tiny model) and `mdagent llm serve` as a job."""

import json
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_the_shared_server_is_real_vllm_with_a_long_context_behind_its_key(vllm_server):
    from openai import OpenAI

    assert vllm_server.base_url.endswith("/v1")
    assert get(f"{vllm_server.root_url}/health")[0] == 200
    assert get(f"{vllm_server.base_url}/models")[0] == 401
    assert get(f"{vllm_server.base_url}/models", "wrong")[0] == 401
    status, models = get(f"{vllm_server.base_url}/models", vllm_server.api_key)
    assert status == 200 and models["data"][0]["id"] == vllm_server.model
    assert models["data"][0]["owned_by"] == "vllm"
    assert vllm_server.max_model_len >= 16384  # mdagent's first prompt alone is over 512 tokens

    client = OpenAI(base_url=vllm_server.base_url, api_key=vllm_server.api_key, timeout=60)
    answer = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "Write a LAMMPS script."}],
        max_tokens=8,
        n=2,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "s",
                "strict": True,
                "schema": {"type": "object", "properties": {"script": {"type": "string"}}, "required": ["script"]},
            },
        },
    )
    assert len(answer.choices) == 2
    assert answer.usage.prompt_tokens > 5 and answer.usage.completion_tokens > 0
    for choice in answer.choices:  # cut at 8 tokens, but constrained: it starts as the schema's object
        assert choice.message.content.startswith('{"')


# ---------------------------------------------------------------- `mdagent llm serve`: the job script


def job_site(scheduler: str, **vllm):
    from mdagent_hpc.execution.site import SiteConfig

    extra = {"qos": "normal"} if scheduler == "slurm" else {}
    return SiteConfig(
        name="gpu",
        scheduler=scheduler,
        queue="gpu",
        account="proj",
        **extra,
        vllm={
            "image": "/apps/vllm.sif",
            "binds": ["/scratch"],
            "env": {"HF_HOME": "/scratch/hf"},
            "args": ["--max-model-len", "16384"],
            "cpus": 16,
            "memory_mb": 64000,
            **vllm,
        },
    )


def directives(script: str, prefix: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith(prefix)]


def server_line(script: str) -> list[str]:
    import shlex

    line = next(line for line in script.splitlines() if "vllm" in line and "serve" in line and "#" not in line)
    return shlex.split(line.replace('"$PORT"', "PORT"))


@pytest.mark.parametrize("scheduler", ["slurm", "pbspro"])
def test_the_job_runs_vllm_from_the_image_with_nv_and_asks_for_the_gpus(scheduler):
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()  # AiiDA's scheduler plugins read their configuration folder on import
    from mdagent_hpc.execution.llm_job import ENDPOINT_FILE, KEY_FILE, submit_script

    script = submit_script(job_site(scheduler), "Qwen/Qwen2.5-Coder-7B-Instruct", "coder", gpus=2, hours=6)
    argv = server_line(script)
    assert argv[:6] == ["apptainer", "exec", "--nv", "--bind", "/scratch", "--env"]
    assert argv[6:9] == ["HF_HOME=/scratch/hf", "/apps/vllm.sif", "vllm"]
    assert argv[9:] == [
        "serve",
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "PORT",
        "--max-model-len",
        "16384",
        ">",
        "vllm.log",
        "2>&1",
    ]
    if scheduler == "slurm":
        assert "#SBATCH --gres=gpu:2" in directives(script, "#SBATCH")
        assert {
            "#SBATCH --time=06:00:00",
            "#SBATCH --cpus-per-task=16",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=proj",
            "#SBATCH --qos=normal",
            "#SBATCH --mem=64000",
        } <= set(directives(script, "#SBATCH"))
    else:
        assert "#PBS -l select=1:mpiprocs=1:ncpus=16:mem=65536000kb:ngpus=2" in directives(script, "#PBS")
        assert {"#PBS -l walltime=06:00:00", "#PBS -q gpu", "#PBS -A proj"} <= set(directives(script, "#PBS"))
    # the key comes from a file of mode 600 into the container's environment, never on a command line
    assert f'export APPTAINERENV_VLLM_API_KEY="$(cat {KEY_FILE})"' in script
    assert "--api-key" not in script
    assert ENDPOINT_FILE in script.split("apptainer")[0]  # node and port are written before the server starts


def test_a_site_without_an_image_runs_its_own_command_and_a_cpu_job_asks_for_no_gpu():
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()
    from mdagent_hpc.execution.llm_job import submit_script

    site = job_site("slurm", image=None, binds=[], modules=["vllm/0.10"], setup=["source /apps/venv/bin/activate"])
    script = submit_script(site, "/models/m", "m", gpus=0, hours=1)
    assert server_line(script)[:3] == ["vllm", "serve", "/models/m"]
    assert not any("gres" in line for line in directives(script, "#SBATCH"))
    assert "apptainer" not in script and "--nv" not in script
    assert (
        script.index("module load vllm/0.10")
        < script.index("source /apps/venv/bin/activate")
        < script.index('"vllm" "serve"')
    )
    assert "export VLLM_API_KEY=" in script and "export HF_HOME=/scratch/hf" in script


def test_llm_serve_refuses_a_site_without_a_vllm_section_in_one_sentence(tmp_path):
    from test_cli import mdagent, one_sentence

    one_sentence(mdagent("llm", "serve", "--site", "local", "--model", "m"), "local", "vllm:")
    one_sentence(mdagent("llm", "serve", "--site", "nowhere", "--model", "m"), "nowhere")
    one_sentence(mdagent("llm", "stop", "nothing"), "nothing")
