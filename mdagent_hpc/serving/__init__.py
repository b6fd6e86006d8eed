"""Models served for the agent: `mdagent llm serve` and the gateway in front of a shared model.

`registry.py` (the endpoints `llm serve` started, in `$MDAGENT_HOME/llm/endpoints.json`), `llm_job.py` (the vLLM
server as a scheduler job), `tunnel.py` (the SSH tunnel to its node), `gateway/` (per-user keys, usage, limits).
Nothing is imported here, so that the settings resolver reads the registry without AiiDA or starlette.
"""
