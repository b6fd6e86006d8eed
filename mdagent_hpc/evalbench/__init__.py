"""Benchmarks, pure: task and question sets (MD-EvalBench's format and simple JSONL), scoring, trajectory rows.

Nothing here talks to AiiDA or an endpoint: `workflows/bench.py` runs the sets through the system and hands the
records back to these functions.
"""
