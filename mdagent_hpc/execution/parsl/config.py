"""A sweep's Parsl configuration from a site config: a HighThroughputExecutor on the site's provider.

One named provider class per scheduler, each polling as often as the site allows. The Slurm one asks `squeue`, not
`sacct`, for its blocks' states; it relies on two private names of Parsl's SlurmProvider (`_cmd`, the status command,
and `_translate_table`), which tests/test_pilot.py pins so that a Parsl upgrade that renames them fails there.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider
from parsl.providers.slurm.slurm import squeue_translate_table

from mdagent_hpc.execution.site import SiteConfig

SQUEUE_STATUS = "squeue --noheader --states=all --format='%i %t' --job '{0}'"


class SitePolled:
    """Ask the scheduler as often as the site says (Parsl's own: every 60 s, 5 s locally)."""

    poll_seconds: float = 60.0

    @property
    def status_polling_interval(self) -> float:
        return self.poll_seconds


class SqueueSlurmProvider(SitePolled, SlurmProvider):
    """SlurmProvider asking squeue, not sacct, for its blocks' states.

    sacct learns of a job seconds after sbatch (from slurmdbd); Parsl reads "no record" as "ended", counts a block
    that is only queued as failed and, after three, gives up on the whole sweep. slurmctld knows a job at once, and
    `--states=all` also says how it ended.
    """

    def __init__(self, *, poll_seconds: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poll_seconds = poll_seconds
        self._cmd = SQUEUE_STATUS
        self._translate_table = squeue_translate_table


class SitePBSProProvider(SitePolled, PBSProProvider):
    def __init__(self, *, poll_seconds: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poll_seconds = poll_seconds


class SiteLocalProvider(SitePolled, LocalProvider):
    def __init__(self, *, poll_seconds: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poll_seconds = poll_seconds


def _walltime(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def provider(site: SiteConfig, blocks: dict):
    """The site's provider with the block settings `blocks` (init/min/max blocks, launcher, worker_init)."""
    p, r = site.pilot, site.resources
    poll = max(site.poll_interval, 0.5)
    walltime = _walltime(p.walltime or r.walltime)
    if site.scheduler == "slurm":
        return SqueueSlurmProvider(
            poll_seconds=poll,
            partition=site.queue,
            account=site.account,
            qos=site.qos,
            nodes_per_block=p.nodes_per_block,
            cores_per_node=p.cores_per_node,
            exclusive=p.cores_per_node is None,
            walltime=walltime,
            scheduler_options=f"#SBATCH --mem={r.memory_mb}M" if r.memory_mb else "",
            cmd_timeout=60,
            **blocks,
        )
    if site.scheduler == "pbspro":
        return SitePBSProProvider(
            poll_seconds=poll,
            account=site.account,
            queue=site.queue,
            nodes_per_block=p.nodes_per_block,
            cpus_per_node=p.cores_per_node or r.mpi_ranks_per_node * r.threads_per_rank,
            walltime=walltime,
            select_options=f"mem={r.memory_mb}mb" if r.memory_mb else "",
            cmd_timeout=60,
            **blocks,
        )
    return SiteLocalProvider(poll_seconds=poll, nodes_per_block=1, **blocks)


def parsl_config(site: SiteConfig, run_dir: str | Path, python: str | None = None):
    """A Parsl Config: HighThroughputExecutor on the site's provider, blocks replaced, lost points retried."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.jobs.error_handlers import windowed_error_handler
    from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher

    p, r = site.pilot, site.resources
    bindir = str(Path(python or sys.executable).parent)  # process_worker_pool.py of the same Parsl
    worker_init = "\n".join(filter(None, [f'export PATH={shlex.quote(bindir)}:"$PATH"', p.worker_init]))
    launcher_name = p.launcher or (
        "single" if p.nodes_per_block == 1 else {"slurm": "srun", "pbspro": "mpiexec"}.get(site.scheduler, "single")
    )
    launcher = {"single": SingleNodeLauncher, "srun": SrunLauncher, "mpiexec": MpiExecLauncher}[launcher_name]()
    blocks = {
        "init_blocks": p.init_blocks,
        "min_blocks": p.min_blocks,
        "max_blocks": p.max_blocks,
        "parallelism": 1.0,
        "worker_init": worker_init,
        "launcher": launcher,
    }
    chosen = provider(site, blocks)
    # One worker per core the block has: Parsl alone would count every core of the node.
    cores = {"slurm": p.cores_per_node, "pbspro": p.cores_per_node or r.mpi_ranks_per_node * r.threads_per_rank}
    executor = HighThroughputExecutor(
        label="pilot",
        provider=chosen,
        address=p.address,
        max_workers_per_node=p.workers_per_node or cores.get(site.scheduler),
        heartbeat_period=max(1, p.lost_after // 4),
        heartbeat_threshold=p.lost_after,
        block_error_handler=windowed_error_handler,  # three blocks in a row failed to start: give up, say why
        worker_logdir_root=str(Path(run_dir) / "workers"),
    )
    return Config(
        executors=[executor],
        run_dir=str(run_dir),
        retries=p.retries,
        strategy="htex_auto_scale",
        strategy_period=2,
        initialize_logging=True,
    )
