"""A process the daemon can run in a second, for tests that need to know a daemon really runs what is submitted.

It lives in tests/, which is on the daemon's PYTHONPATH when a test session starts the daemon (AiiDA passes the
starting process's sys.path on to its workers).
"""

from aiida import orm
from aiida.engine import WorkChain


class AddOne(WorkChain):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("value", valid_type=orm.Int)
        spec.output("value", valid_type=orm.Int)
        spec.outline(cls.add_one)

    def add_one(self):
        self.out("value", orm.Int(self.inputs.value.value + 1).store())
