"""Provenance queries, pure: what is recorded about each run (record.py), the filters people ask with (filters.py),
run against run (diff.py) and thermo plots (plot.py). The AiiDA side is `mdagent_hpc.workflows.query`."""
