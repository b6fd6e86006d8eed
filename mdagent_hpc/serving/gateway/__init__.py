"""The authenticated gateway in front of a shared OpenAI-compatible server (vLLM): per-user keys, usage, limits.

`sse.py` reads server-sent events (pure); `app.py` is the ASGI app (starlette, httpx2) and its uvicorn server.
Users, keys and quotas come from `mdagent_hpc.accounts`.
"""
