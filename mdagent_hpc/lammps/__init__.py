"""Pure LAMMPS domain: parsing, policy, potentials, preflight, log reading, evaluation.

Nothing here imports AiiDA, Parsl or an HTTP client.
"""
