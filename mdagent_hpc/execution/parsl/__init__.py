"""The Parsl engine of a sweep: config.py (the site's provider and executor), driver.py (the driver that runs a
sweep's points in pilot blocks, `python -m mdagent_hpc.execution.parsl.driver`), worker.py (what a worker runs for one
point: the standard library only)."""
