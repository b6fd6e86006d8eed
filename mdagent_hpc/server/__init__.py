"""`mdagent server`: the shared deployment's HTTP API in front of one AiiDA profile (docs/deploy.md).

wire.py (request and answer bodies, pure), access.py (who may read, cancel, submit: pure decisions),
service.py (the AiiDA side: launching as a user, reading what a user may see), app.py (starlette routes, keys).
"""
