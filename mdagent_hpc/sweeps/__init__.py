"""Parameter sweeps, pure: the spec and its points (spec.py), per-point observables, the table and plot (results.py)."""
