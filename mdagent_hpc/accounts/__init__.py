"""Users, their API keys (stored hashed) and quotas: the LLM gateway's and the shared server's one user store.

`keys` and `quotas` are pure; `store` keeps users, keys and daily usage in a SQL database through SQLAlchemy
(a SQLite file under MDAGENT_HOME by default, PostgreSQL for a shared deployment).
"""
