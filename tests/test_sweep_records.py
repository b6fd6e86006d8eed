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


SCRIPT = """units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create ${T} 87287 loop geom
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
fix 1 all nve
thermo_style custom step temp pe
thermo 10
run 100
"""


@pytest.fixture(scope="module")
def lj_log(tmp_path_factory) -> str:
    """The log of a short LJ run by the real LAMMPS (the template at T = 1.0)."""
    from test_log import run_lammps

    log, screen, status = run_lammps(tmp_path_factory.mktemp("lj"), SCRIPT.replace("${T}", "1.0"))
    assert status == 0, screen[-2000:]
    return log.read_text()


def test_one_record_points_records_a_batch_from_logs_folders_and_failures_and_each_is_listed_once(profile, lj_log):
    import io

    from aiida import orm

    from mdagent_hpc.provenance import EVERYONE, POINT_NODE_TYPE
    from mdagent_hpc.provenance.filters import build_query
    from mdagent_hpc.provenance.query import record_run, search
    from mdagent_hpc.workflows.sweep import PointRecord, record_points

    folder = orm.FolderData()
    folder.base.repository.put_object_from_bytes(lj_log.encode(), "log.lammps")
    log = orm.SinglefileData(io.BytesIO(lj_log.encode()), filename="log.lammps")
    task = f"records test {id(folder)}"
    template = orm.SinglefileData(io.BytesIO(SCRIPT.encode()), filename="in.lammps")
    entries = [
        {"id": "T_1", "vars": {"T": 1}, "template": 1, "log_name": "points/T_1/log.lammps", "failure": None},
        {"id": "T_2", "vars": {"T": 2}, "template": 1, "log_name": "log.lammps", "failure": None},
        {"id": "T_3", "vars": {"T": 3}, "template": 1, "log_name": "log.lammps", "failure": "job killed by Slurm"},
    ]
    made = record_points(
        template=template,
        observables=orm.List([{"name": "pe", "column": "pe"}]),
        points=orm.List(entries),
        log_0=log,
        retrieved_1=folder,
    )
    assert sorted(made) == ["log_1", "result_0", "result_1", "result_2", "thermo_0", "thermo_1"]
    results = [made[f"result_{i}"] for i in range(3)]
    assert all(r.node_type == POINT_NODE_TYPE and r.creator.process_label == "record_points" for r in results)
    assert [r["ok"] for r in results] == [True, True, False] and results[2]["problems"] == ["job killed by Slurm"]
    assert made["thermo_0"]["rows"] and made["thermo_0"].get_dict() == made["thermo_1"].get_dict()
    spec = {"task": task, "model": "test"}
    for r in results:
        record_run(r, spec=spec, template=SCRIPT)
    PointRecord({"id": "T_1", "ok": True}).store()  # an old sweep's record: its record_point process is listed
    found = search(build_query(kind="point", task=task, limit=10), EVERYONE)
    assert sorted(row["point"] for row in found) == ["T_1", "T_2", "T_3"]
    assert {row["kind"] for row in found} == {"point"}
    assert [row["verdict"] for row in sorted(found, key=lambda row: row["point"])] == ["passed", "passed", "failed"]
