"""Small processes for the benchmarks; importable by a daemon worker when perf/ is on its PYTHONPATH."""

import time

from aiida import orm
from aiida.engine import Process, calcfunction


@calcfunction
def add(x: orm.Int, y: orm.Int) -> orm.Int:
    """x + y: a process that does (almost) nothing but its bookkeeping."""
    return orm.Int(x.value + y.value)


class BlockingSleep(Process):
    """The negative control: a coroutine `run` that blocks the event loop (time.sleep, no await)."""

    _node_class = orm.CalcFunctionNode

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("seconds", valid_type=orm.Float)

    async def run(self):
        time.sleep(self.inputs.seconds.value)
