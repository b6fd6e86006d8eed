"""A sweep's table is made from its points' records in database work that grows with the points, not their square.

AiiDA checks each input link of a process against the links already given with ==; a plain Dict compares by
content, read from the database on both sides, so the table of N Dict records took N² reads (400 points: 137 s).
A point's record (`PointRecord`) compares by identity. Counted in SQL statements, never timed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mdagent_hpc.sweeps.spec import SweepSpec, expand

SWEEPS = Path(__file__).resolve().parents[1] / "workflows" / "sweeps"


@pytest.fixture(scope="module")
def profile():
    from mdagent_hpc.api import load_profile

    return load_profile()


def spec_of(points: int) -> SweepSpec:
    raw = yaml.safe_load((SWEEPS / "lj-melt-temperature.yaml").read_text())
    raw.pop("answers")
    raw["parameters"] = [{"name": "T", "start": 0.5, "stop": round(0.5 + 0.01 * (points - 1), 4), "step": 0.01}]
    return SweepSpec(**raw)


def statements_for_the_table(points: int) -> int:
    from aiida import orm
    from aiida.manage import get_manager
    from sqlalchemy import event

    from mdagent_hpc.workflows.sweep import PointRecord, sweep_results

    spec = spec_of(points)
    records = {
        p.id: PointRecord(
            {"id": p.id, "vars": p.vars, "ok": True, "grade": "pass", "observables": {"pe": -1.0, "temp": 1.0}}
        ).store()
        for p in expand(spec)
    }
    assert len(records) == points
    engine = get_manager().get_profile_storage().get_session().get_bind()
    count = [0]

    def counted(*args):
        count[0] += 1

    event.listen(engine, "before_cursor_execute", counted)
    try:
        outputs = sweep_results(orm.Dict(spec.model_dump(mode="json", exclude_none=True)), **records)
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    assert len(outputs["results"]["rows"]) == points
    return count[0]


def test_the_tables_database_work_grows_with_the_points_not_their_square(profile):
    small, large = statements_for_the_table(20), statements_for_the_table(60)
    assert large <= 3.6 * small, f"20 points: {small} SQL statements, 60 points: {large} (x{large / small:.1f})"


def test_a_record_equals_only_itself(profile):
    from mdagent_hpc.workflows.sweep import PointRecord

    one, two = PointRecord({"id": "p1", "ok": True}).store(), PointRecord({"id": "p1", "ok": True}).store()
    assert one == one and one != two and len({one, two}) == 2
