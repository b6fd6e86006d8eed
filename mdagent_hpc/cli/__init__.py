"""The `mdagent` command: a click group (`main.py`) and one module per command group, loaded when used."""

from mdagent_hpc.cli.main import main

__all__ = ["main"]
