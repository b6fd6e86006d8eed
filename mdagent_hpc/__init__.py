"""mdagent-hpc: LLM-agent LAMMPS workflows on HPC clusters, with AiiDA provenance."""

__version__ = "0.1.0"
