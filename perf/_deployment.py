"""What the shared-server benchmarks (server_load, server_scale, chaos) set up alike: the replayed good answer and
the environment of a deployment of their own (its home, its RabbitMQ vhost, the replay model server)."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOOD_ANSWER = f"```lammps\n{(REPO / 'mdagent_hpc' / 'examples' / 'demo' / 'good.lammps').read_text()}```\n"


def deployment_env(home: Path, vhost: str, model_url: str) -> dict[str, str]:
    """This process's environment for a deployment in `home` on `vhost`, its LLM the replay server at `model_url`;
    nothing of the caller's own mdagent settings (profile, server, keys, users database) carried over."""
    env = {
        **os.environ,
        "MDAGENT_HOME": str(home),
        "AIIDA_BROKER_VIRTUAL_HOST": vhost,
        "MDAGENT_LLM_BASE_URL": model_url,
        "MDAGENT_LLM_MODEL": "fake-model",
        "MDAGENT_LLM_API_KEY": "x",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    for k in ("MDAGENT_AIIDA_PROFILE", "MDAGENT_SERVER", "MDAGENT_API_KEY", "MDAGENT_USERS_DB", "AIIDA_PATH"):
        env.pop(k, None)
    return env
