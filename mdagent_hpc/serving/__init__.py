"""Models served for the agent: `mdagent llm serve` and the gateway in front of a shared model.

`llm_job.py` (the vLLM server as a scheduler job), `tunnel.py` (the SSH tunnel to its node), `gateway/` (per-user
keys, usage, limits). The endpoints `llm serve` started are recorded in `settings/endpoints.py`, a source of the
settings resolver: below every engine, so that reading settings never imports AiiDA or starlette.
"""
