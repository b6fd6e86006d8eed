"""SweepWorkChain (`mdagent.sweep`): one template, validated by the agent loop, fanned out over every point.

setup -> validate (AgentWorkChain at the first probe point) -> while there is work: [correct: the failed points'
diagnostics to the agent once, the corrected template validated at a failed point] and [launch a batch of points,
record them] -> finalize (table and plot). Probe points (the range's extremes) form the first batch, so a template
that fails at one end is corrected before the rest run; after a correction only the failed points run again.

Every point is recorded by the calcfunction `record_point` (the same for both engines): its template, its variable
values, its log, its production thermo data and its observables, under the sweep's node. The fan-out is idempotent
(a step re-run after a daemon restart reuses the children it had already launched, found by link label), so a
resumed sweep neither loses nor repeats a point. The parsl engine runs each batch in a PilotBaseWorkChain, which
submits the pilot job again while points are missing.

A sweep keeps, in its extras, what a later sweep of the same spec reuses (`reuse`: its template, the files its jobs
stage, its points' records), updated after each batch, so that it survives an interruption; given those as the input
`reuse`, a sweep asks the model nothing and runs only the points that have not passed (docs/sweeps.md, Resuming).
"""

from __future__ import annotations

import io

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_

from mdagent_hpc.lammps.log import parse_log
from mdagent_hpc.models import Attempt
from mdagent_hpc.provenance.sweeps import REUSE, SPEC_KEY
from mdagent_hpc.sweeps.results import PointResult, plot, point_result, production, table, table_json
from mdagent_hpc.sweeps.spec import (
    Point,
    SweepSpec,
    correction_task,
    expand,
    ordered,
    probe_points,
    spec_key,
    template_task,
)
from mdagent_hpc.workflows.agent import AgentWorkChain
from mdagent_hpc.workflows.broker import PatientWithBroker
from mdagent_hpc.workflows.calcfunctions import call_without_broker, finite
from mdagent_hpc.workflows.generate import LinksOnlyNewOutputs
from mdagent_hpc.workflows.lammps_calc import LOG
from mdagent_hpc.workflows.lammps_job import LammpsJobWorkChain
from mdagent_hpc.workflows.owned import OwnedSteps

ENGINES = ("calcjob", "parsl")
RECORDS_PER_STEP = 25  # a kill (Ctrl-C, `mdagent cancel`) and a checkpoint wait for at most this many records


class PointRecord(orm.Dict):
    """A sweep point's result (sweep.results.PointResult), as `record_point` makes it.

    A Dict compares by content, read from the database on both sides; AiiDA checks each input link of a process
    against those already given with ==, so the table's calcfunction with a Dict per point made N² database reads
    (400 points: 137 s). A record is itself: it compares by identity, as nodes do."""

    def __eq__(self, other):
        if self is other:
            return True
        if isinstance(other, PointRecord):
            return self._identity() == other._identity()
        return orm.Node.__eq__(self, other)

    def __hash__(self):
        return hash(self._identity())

    def _identity(self) -> str:
        """The node's UUID, read once: it never changes, and each read is a trip through the ORM (~20 us), which
        the link checks above make N² times."""
        if getattr(self, "_uuid_read", None) is None:
            self._uuid_read = self.uuid
        return self._uuid_read


class SweepPoint(PointRecord):
    """A sweep point: its result (sweep.results.PointResult), made by `record_points`, listed with the runs (its
    query fields in its extras, docs/queries.md). The sweep's own output `points.<id>` is each point's latest."""


@calcfunction
def record_point(
    template: orm.SinglefileData,
    point: orm.Dict,
    observables: orm.List,
    log_name: orm.Str,
    retrieved: orm.FolderData | None = None,
    failure: orm.Str | None = None,
    log: orm.SinglefileData | None = None,
) -> dict:
    """One point, as sweeps recorded them until December 2026 (a process per point; `record_points` now). Kept so
    that stored sweeps load and `mdagent sweep resume` can reuse their points."""
    return _point_record(
        template.get_content(),
        point.get_dict(),
        observables.get_list(),
        log_name.value,
        retrieved,
        failure.value if failure is not None else None,
        log,
        PointRecord,
    )


@calcfunction
def record_points(template: orm.SinglefileData, observables: orm.List, points: orm.List, **sources) -> dict:
    """The records of a batch of sweep points, one process for the batch (a process per point cost more than the
    point's LAMMPS run). For the i-th of `points` ({id, vars, template, log_name, failure}) the sources are
    `log_i` (a pilot's point: its log, taken out of the pilot's folder by `pilot_logs`) or `retrieved_i` (the folder
    of the point's own job); the outputs are `result_i` (a SweepPoint), `thermo_i` (the thermo rows of its production
    run) and, when its log came in a folder, `log_i`."""
    text_of_template, wanted = template.get_content(), observables.get_list()
    outputs = {}
    for i, entry in enumerate(points.get_list()):
        made = _point_record(
            text_of_template,
            entry,
            wanted,
            entry["log_name"],
            sources.get(f"retrieved_{i}"),
            entry.get("failure"),
            sources.get(f"log_{i}"),
            SweepPoint,
        )
        for name, node in made.items():
            if name != "log" or f"log_{i}" not in sources:
                outputs[f"{name}_{i}"] = node
    return outputs


def _point_record(template: str, data: dict, observables: list, log_name: str, retrieved, failure, log, kind) -> dict:
    """A point's record (`kind`), and its log and thermo rows when it left a log."""
    spec_point = Point(id=data["id"], vars=data["vars"])
    names = retrieved.base.repository.list_object_names(_folder(log_name)) if retrieved is not None else []
    if log is None and (retrieved is None or log_name.rsplit("/", 1)[-1] not in names):
        result = PointResult(
            id=spec_point.id,
            vars=spec_point.vars,
            ok=False,
            grade="fail",
            problems=[failure or "LAMMPS wrote no log"],
            template=data.get("template", 1),
        )
        return {"result": kind(result.model_dump(mode="json"))}
    text = log.get_content() if log is not None else retrieved.base.repository.get_object_content(log_name, mode="r")
    parsed = parse_log(text)
    from mdagent_hpc.sweeps.spec import Observable

    result = point_result(spec_point, parsed, template, [Observable(**o) for o in observables], data.get("template", 1))
    if failure is not None and result.ok:  # the job failed although its log looks fine (e.g. cut by the scheduler)
        result.ok, result.problems = False, [failure]
    block = production(parsed)
    thermo = {"columns": block.columns, "rows": block.rows} if block else {"columns": [], "rows": []}
    return {
        "result": kind(finite(result.model_dump(mode="json"))),
        "log": orm.SinglefileData(io.BytesIO(text.encode()), filename="log.lammps"),
        "thermo": orm.Dict(finite(thermo)),
    }


def _folder(path: str) -> str | None:
    return path.rsplit("/", 1)[0] if "/" in path else None


@calcfunction
def pilot_logs(retrieved: orm.FolderData, points: orm.List) -> dict:
    """The log of each of `points` that the pilot's retrieved folder holds (`points/ID/log.lammps`), a node each.

    One call per batch: a calcfunction's inputs are hashed again when it is stored, so a pilot's whole folder as an
    input of every point's record cost each record a pass over every point's log (1,000 points: ~2.8 s a record)."""
    folder = retrieved.base.repository
    ran = set(folder.list_object_names("points")) if "points" in folder.list_object_names() else set()
    logs = {}
    for pid in points.get_list():
        if pid in ran and LOG in folder.list_object_names(f"points/{pid}"):
            content = folder.get_object_content(f"points/{pid}/{LOG}", mode="rb")
            logs[pid] = orm.SinglefileData(io.BytesIO(content), filename=LOG)
    return logs


@calcfunction
def sweep_results(spec: orm.Dict, **points: orm.Dict) -> dict:
    """The table (CSV and JSON) and the plot (PNG) of every point's latest record."""
    import tempfile
    from pathlib import Path

    sweep = SweepSpec(**spec.get_dict())
    frame = table(sweep, [PointResult(**node.get_dict()) for node in points.values()])
    with tempfile.TemporaryDirectory(prefix="mdagent-sweep-") as tmp:
        png = plot(sweep, frame, Path(tmp) / "sweep.png").read_bytes()
    return {
        "table": orm.SinglefileData(io.BytesIO(frame.to_csv(index=False).encode()), filename="sweep.csv"),
        "results": orm.Dict({"rows": table_json(frame)}),
        "plot": orm.SinglefileData(io.BytesIO(png), filename="sweep.png"),
    }


def _define_pilot_and_reuse(spec) -> None:
    """The parsl engine's inputs (`pilot.*`) and what an earlier sweep of the same spec hands on (`reuse.*`)."""
    spec.input_namespace("pilot", required=False, help="parsl engine: how the pilot jobs run")
    spec.input_namespace("reuse", required=False, help="what an earlier sweep of the same spec hands on")
    spec.input(
        "pilot.code",
        valid_type=orm.AbstractCode,
        required=False,
        help="parsl engine: the login host's Python that runs the driver (resolved with the site, once)",
    )
    spec.input("pilot.site", valid_type=orm.Dict, required=False, help="parsl engine: the site's config")
    spec.input(
        "pilot.max_iterations",
        valid_type=orm.Int,
        required=False,
        help="parsl engine: pilot jobs per batch at most (the site's on_failure.max_resubmits + 1)",
    )
    spec.input(
        "reuse.template",
        valid_type=orm.SinglefileData,
        required=False,
        help="an earlier sweep's validated template: no agent run validates one again",
    )
    spec.input_namespace(
        "reuse.files",
        valid_type=orm.Data,
        dynamic=True,
        required=False,
        help="the files the template's jobs stage (data files)",
    )
    spec.input_namespace(
        "reuse.potentials",
        valid_type=orm.Data,
        dynamic=True,
        required=False,
        help="the potential files the template's jobs stage",
    )
    spec.input_namespace(
        "reuse.points",
        valid_type=orm.Dict,
        dynamic=True,
        required=False,
        help="point id -> an earlier record of it that passed: the point does not run again",
    )


class SweepWorkChain(PatientWithBroker, OwnedSteps, LinksOnlyNewOutputs, WorkChain):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("sweep", valid_type=orm.Dict, help="the sweep (sweep.spec.SweepSpec, without recorded answers)")
        spec.input("engine", valid_type=orm.Str, help="calcjob (a LammpsJobWorkChain per point) or parsl (pilot)")
        spec.input(
            "max_concurrent",
            valid_type=orm.Int,
            default=lambda: orm.Int(8),
            help="calcjob engine: at most this many jobs in flight",
        )
        spec.input(
            "max_core_hours",
            valid_type=orm.Float,
            required=False,
            help="the site's core-hour cap, checked again with the validation run's measured time",
        )
        spec.input("cores_per_point", valid_type=orm.Int, default=lambda: orm.Int(1))
        spec.input(
            "sweep_folder",
            valid_type=orm.Str,
            required=False,
            help="parsl engine: the folder on the site where the pilot keeps finished points",
        )
        _define_pilot_and_reuse(spec)
        spec.expose_inputs(AgentWorkChain, namespace="agent", exclude=("task", "variables"))
        spec.outline(
            cls.setup,
            if_(cls.needs_template)(cls.validate, cls.check_validation),
            while_(cls.has_work)(
                if_(cls.should_correct)(cls.correct, cls.check_correction),
                if_(cls.has_pending)(cls.launch, cls.collect, while_(cls.has_unrecorded)(cls.record_some)),
            ),
            cls.finalize,
        )
        spec.output("template", valid_type=orm.SinglefileData, required=False, help="the last template")
        spec.output_namespace(
            "points",
            valid_type=orm.Dict,
            dynamic=True,
            required=False,
            help="point id -> its latest record (sweep.results.PointResult)",
        )
        spec.output("table", valid_type=orm.SinglefileData, required=False, help="CSV: one row per point")
        spec.output("results", valid_type=orm.Dict, required=False, help="the table as JSON rows")
        spec.output("plot", valid_type=orm.SinglefileData, required=False, help="PNG: observables vs parameters")
        spec.exit_code(400, "ERROR_NO_TEMPLATE", message="the agent found no template that passes at {point}")
        spec.exit_code(410, "ERROR_POINTS_FAILED", message="{failed} of {total} points failed")
        spec.exit_code(420, "ERROR_OVER_CORE_HOURS", message="{why}")

    # -- steps ------------------------------------------------------------------------------------------------
    def setup(self):
        sweep = self._sweep()
        points = expand(sweep)
        probes = probe_points(sweep, points)
        self.ctx.points = {p.id: p.model_dump(mode="json") for p in ordered(points, probes)}
        self.ctx.probe = probes[0].id
        self.ctx.state = {}  # point id -> {"record": pk, "ok": bool, "template": n}
        self.ctx.template_number = 0
        self.ctx.corrections = 0
        self.ctx.launched = []  # point ids of the batch in flight
        self.ctx.launched_phase_open = False  # the last batch left points of its phase (probes, rest) pending
        self.ctx.pilot_round = 0  # PilotBaseWorkChains submitted (each resumes the same sweep folder)
        self.ctx.observables = orm.List([o.model_dump() for o in sweep.observables]).store().pk  # one for all points
        reused = self._take_reused()
        first = [p.id for p in (probes if reused else probes[1:]) if p.id not in reused]
        rest = [p.id for p in points if p not in probes and p.id not in reused]
        self.ctx.queues = [q for q in (first, rest) if q]
        self.node.base.extras.set_many(
            {
                "task": sweep.task,
                "site": self.inputs.agent.site.get("name", "local"),
                "engine": self.inputs.engine.value,
                "points_total": len(points),
                "points_done": 0,
                "points_failed": 0,
                "llm_calls": 0,
                SPEC_KEY: spec_key(self.inputs.sweep.get_dict()),
            }
        )
        if reused:
            self._remember()
            self.report(
                f"{len(points)} points on engine {self.inputs.engine.value}; {len(reused)} passed in an "
                f"earlier sweep of this spec and are reused with its template; {len(points) - len(reused)} "
                "to run"
            )
            return
        self.report(
            f"{len(points)} points on engine {self.inputs.engine.value}; validating the template at "
            f"{', '.join(p.id for p in probes)} first"
        )

    def _take_reused(self) -> list[str]:
        """An earlier sweep's template and passed points (input `reuse`), taken as this sweep's own."""
        if "reuse" not in self.inputs or "template" not in self.inputs.reuse:
            return []
        reuse = self.inputs.reuse
        self.ctx.template = reuse.template
        self.ctx.template_number = 1
        self.ctx.job_files = {
            group: {key: node.pk for key, node in reuse[group].items()} if group in reuse else {}
            for group in ("files", "potentials")
        }
        points = reuse.points if "points" in reuse else {}
        for pid, result in points.items():
            if pid in self.ctx.points and result["ok"]:
                self.ctx.state[pid] = {"record": result.pk, "ok": True, "template": 1}
        return list(self.ctx.state)

    def needs_template(self):
        return self.ctx.template_number == 0

    def validate(self):
        sweep = self._sweep()
        probe = Point(**self.ctx.points[self.ctx.probe])
        return ToContext(agent=self._agent(template_task(sweep, probe), probe, "validate"))

    def check_validation(self):
        if not self._take_template(self.ctx.agent, self.ctx.probe):
            return self.exit_codes.ERROR_NO_TEMPLATE.format(point=self.ctx.probe)
        self._remember()
        return self._check_core_hours()

    def _check_core_hours(self):
        """The plan counted points at a declared time; before they fan out, count them at the measured one."""
        if "max_core_hours" not in self.inputs:
            return None
        seconds = orm.load_node(self.ctx.state[self.ctx.probe]["record"]).get("seconds")
        if seconds is None:
            return None
        points, cores, cap = len(self.ctx.points), self.inputs.cores_per_point.value, self.inputs.max_core_hours.value
        hours = points * cores * seconds / 3600
        if hours <= cap:
            return None
        why = (
            f"the validation run took {seconds:.3g} s, so the {points} points x {cores} cores need about "
            f"{hours:.3g} core-hours, over the site's {cap:g} (sweep.max_core_hours); no other point was run"
        )
        self.report(why)
        return self.exit_codes.ERROR_OVER_CORE_HOURS.format(why=why)

    def has_work(self):
        return self.has_pending() or self.should_correct()

    def has_pending(self):
        return bool(self.ctx.queues)

    def should_correct(self):
        """At the end of a batch of probes, or of everything: points failed with this template and corrections left."""
        if self.ctx.corrections >= self._sweep().corrections:
            return False
        if self.ctx.queues and self.ctx.launched_phase_open:
            return False
        return bool(self._failed_now())

    def correct(self):
        self.ctx.corrections += 1
        failed = self._failed_now()
        failures = {
            pid: PointResult(**orm.load_node(self.ctx.state[pid]["record"]).get_dict()).problems for pid in failed
        }
        first = Point(**self.ctx.points[failed[0]])
        self.report(
            f"{len(failed)} point(s) failed with template {self.ctx.template_number}: their diagnostics go "
            f"to the agent (correction {self.ctx.corrections} of {self._sweep().corrections})"
        )
        task = correction_task(self._sweep(), first, self.ctx.template.get_content(), failures)
        self.ctx.correcting = first.id
        return ToContext(agent=self._agent(task, first, f"correct_{self.ctx.corrections}"))

    def check_correction(self):
        failed = [pid for pid in self._failed_now() if pid != self.ctx.correcting]
        if not self._take_template(self.ctx.agent, self.ctx.correcting):
            self.report("the correction did not pass; the failed points stay failed")
            return
        self._remember()
        if failed:  # the failed points run again with the corrected template, before what is still pending
            self.ctx.queues = [failed, *self.ctx.queues]
            self.ctx.launched_phase_open = False

    def launch(self):
        queue = self.ctx.queues[0]
        engine = self.inputs.engine.value
        size = len(queue) if engine == "parsl" else self.inputs.max_concurrent.value
        batch, rest = queue[:size], queue[size:]
        self.ctx.queues = [rest, *self.ctx.queues[1:]] if rest else self.ctx.queues[1:]
        self.ctx.launched_phase_open = bool(rest)  # a phase (probes, then the rest) is over when its queue is
        self.ctx.launched = batch
        existing = self._children()
        n = self.ctx.template_number
        if engine == "parsl":
            self.ctx.pilot_round += 1
            label = f"pilot_{self.ctx.pilot_round}"
            node = existing.get(label) or self._submit_pilot(batch, label)
            return ToContext(pilot=node)
        jobs = {}
        for pid in batch:
            label = f"point_{pid}_t{n}"
            jobs[f"job_{pid}"] = existing.get(label) or self._submit_point(Point(**self.ctx.points[pid]), label)
        self.report(
            f"running {len(batch)} point(s) with template {n}: {', '.join(batch[:5])}"
            + (" ..." if len(batch) > 5 else "")
        )
        return ToContext(**jobs)

    def collect(self):
        """What each point of the batch left (its log, or why it failed), recorded by `record_some`."""
        if self.inputs.engine.value == "parsl":
            self.ctx.unrecorded = self._pilot_outcomes()
        else:
            self.ctx.unrecorded = []
            for pid in self.ctx.launched:
                job = self.ctx[f"job_{pid}"]
                failure = None if job.is_finished_ok else job.exit_message or f"job {job.process_state.value}"
                retrieved = job.outputs.retrieved.pk if "retrieved" in job.outputs else None
                self.ctx.unrecorded.append({"pid": pid, "retrieved": retrieved, "log_name": LOG, "failure": failure})
        self.ctx.launched = []

    def _pilot_outcomes(self) -> list[dict]:
        """The points the pilot jobs ended (PilotBaseWorkChain submitted the job again while some were missing);
        a point none of them ran is recorded as failed."""
        pilot = self.ctx.pilot
        ended = pilot.outputs.results.get_dict() if "results" in pilot.outputs else {}
        logs = self._pilot_logs(pilot) if "retrieved" in pilot.outputs else {}
        outcomes = []
        for pid in self.ctx.launched:
            failure = None
            if pid not in ended:
                failure = f"the pilot did not run this point ({pilot.exit_message or pilot.process_state.value})"
            elif ended[pid].get("returncode") != 0:  # None: refused by the sandbox policy with these values
                failure = ended[pid].get("error") or f"LAMMPS exited with {ended[pid].get('returncode')}"
            log = logs[pid].pk if pid in logs else None
            outcomes.append({"pid": pid, "log": log, "log_name": f"points/{pid}/{LOG}", "failure": failure})
        return outcomes

    def has_unrecorded(self):
        return bool(self.ctx.get("unrecorded"))

    def record_some(self):
        """Record the next few points of the batch, one `record_points` for them (a step each few, so that a kill or
        a checkpoint never waits for a whole batch: 1,000 records take minutes)."""
        chunk, self.ctx.unrecorded = self.ctx.unrecorded[:RECORDS_PER_STEP], self.ctx.unrecorded[RECORDS_PER_STEP:]
        self._record(chunk)
        self._remember()

    def _remember(self) -> None:
        """What a later sweep of this spec reuses, and the counts `mdagent sweep status` shows: after each batch."""
        records = {pid: {"pk": s["record"], "ok": s["ok"]} for pid, s in self.ctx.state.items()}
        done = sum(1 for s in self.ctx.state.values() if s["ok"])
        reuse = {"template": self.ctx.template.pk, "files": self.ctx.job_files, "records": records}
        self.node.base.extras.set_many({REUSE: reuse, "points_done": done, "points_failed": len(records) - done})

    def finalize(self):
        records = {pid: orm.load_node(s["record"]) for pid, s in self.ctx.state.items()}
        for pid, record in records.items():
            self.out(f"points.{pid}", record)
        self.out("template", self.ctx.template)
        outputs = sweep_results(self.inputs.sweep, **records, metadata={"call_link_label": "results"})
        for name, node in outputs.items():
            self.out(name, node)
        failed = [pid for pid, s in self.ctx.state.items() if not s["ok"]]
        self.report(
            f"{len(records) - len(failed)} of {len(self.ctx.points)} points passed; "
            f"LLM calls {self.node.base.extras.get('llm_calls', 0)}"
        )
        if failed:
            return self.exit_codes.ERROR_POINTS_FAILED.format(failed=len(failed), total=len(self.ctx.points))
        return None

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _sweep(self) -> SweepSpec:
        return SweepSpec(**self._spec_dict())

    def _spec_dict(self) -> dict:
        """The spec, read once per process (a stored node's attributes are read from the database at each use)."""
        if getattr(self, "_spec_read", None) is None:
            self._spec_read = self.inputs.sweep.get_dict()
        return self._spec_read

    def _template_text(self) -> str:
        """The current template's text, read once per template."""
        template = self.ctx.template
        if getattr(self, "_template_read", (None, None))[0] != template.pk:
            self._template_read = (template.pk, template.get_content())
        return self._template_read[1]

    def _agent(self, task: str, point: Point, label: str):
        if (found := self._child(label)) is not None:  # launched before a restart: not asked again
            return found
        inputs = self.exposed_inputs(AgentWorkChain, "agent")
        inputs["metadata"] = {**inputs.get("metadata", {}), "call_link_label": label}
        return self.submit(AgentWorkChain, **inputs, task=orm.Str(task), variables=orm.Dict(point.vars))

    def _take_template(self, agent, pid: str) -> bool:
        """After an agent run: count its LLM calls; if it passed, its script is the template and its run the point's."""
        attempts = [
            Attempt(**n.get_dict())
            for n in agent.base.links.get_outgoing(
                link_type=LinkType.RETURN, link_label_filter="attempts__%"
            ).all_nodes()
        ]
        self.node.base.extras.set("llm_calls", self.node.base.extras.get("llm_calls", 0) + len(attempts))
        if not agent.is_finished_ok:
            self.report(f"the agent found no template that passes at {pid}: {agent.exit_message}")
            return False
        self.ctx.template_number += 1
        self.ctx.template = agent.outputs.script
        passed = next(a for a in attempts if a.passed)
        run = orm.load_node(passed.nodes["run"])
        self.ctx.job_files = {}  # "files"/"potentials" -> port name -> pk: what every point's job stages
        for group in ("files", "potentials"):
            links = run.base.links.get_incoming(link_label_filter=f"lammps__{group}__%").all()
            self.ctx.job_files[group] = {
                link.link_label.removeprefix(f"lammps__{group}__"): link.node.pk for link in links
            }
        self.report(f"template {self.ctx.template_number} passed at {pid} after {len(attempts)} attempt(s)")
        self._record([{"pid": pid, "retrieved": agent.outputs.retrieved.pk, "log_name": LOG, "failure": None}])
        return True

    def _pilot_logs(self, pilot) -> dict:
        """The batch's logs out of the pilot's folder, by `pilot_logs` (once: found again after a restart)."""
        label = f"logs_{self.ctx.pilot_round}"
        found = self._child(label)
        if found is None:
            inputs = {"retrieved": pilot.outputs.retrieved, "points": orm.List(list(self.ctx.launched))}
            return call_without_broker(pilot_logs, **inputs, metadata={"call_link_label": label})
        return {link.link_label: link.node for link in found.base.links.get_outgoing(link_type=LinkType.CREATE).all()}

    def _record(self, outcomes: list[dict]) -> None:
        """Record points with the current template by one `record_points` (found again after a restart, by label).
        An outcome: pid, log_name, failure and the pk of its log (a pilot's point) or retrieved folder (its own job)."""
        n = self.ctx.template_number
        label = f"records_{outcomes[0]['pid']}_t{n}"  # a point is recorded once per template
        found = self._child(label)
        if found is None or not found.is_finished_ok:  # none yet, or one a daemon stopped in the middle
            entries, sources = [], {}
            for i, outcome in enumerate(outcomes):
                pid = outcome["pid"]
                entries.append(
                    {
                        **self.ctx.points[pid],
                        "template": n,
                        "log_name": outcome["log_name"],
                        "failure": outcome["failure"],
                    }
                )
                if outcome.get("log"):
                    sources[f"log_{i}"] = orm.load_node(outcome["log"])
                elif outcome.get("retrieved"):
                    sources[f"retrieved_{i}"] = orm.load_node(outcome["retrieved"])
            made = call_without_broker(
                record_points,
                template=self.ctx.template,
                observables=orm.load_node(self.ctx.observables),
                points=orm.List(entries),
                **sources,
                metadata={"call_link_label": label},
            )
            for i in range(len(outcomes)):
                self._index(made[f"result_{i}"])
        else:
            made = {
                link.link_label: link.node for link in found.base.links.get_outgoing(link_type=LinkType.CREATE).all()
            }
        for i, outcome in enumerate(outcomes):
            result = made[f"result_{i}"]
            ok = result["ok"]
            self.ctx.state[outcome["pid"]] = {"record": result.pk, "ok": ok, "template": n}
            if not ok:
                self.report(f"point {outcome['pid']} failed: {'; '.join(result['problems'][:2])}")

    def _index(self, record) -> None:
        """The query fields of a point (docs/queries.md), recorded on its SweepPoint as it is made."""
        from mdagent_hpc.provenance.query import record_run

        try:
            record_run(record, sweep=self.node, spec=self._spec_dict(), template=self._template_text())
        except Exception as exc:  # noqa: BLE001 (the point stands; `mdagent runs index` records it again)
            self.logger.warning(
                f"could not record the query fields of point {record.pk} ({exc}); "
                "`mdagent runs index` records them later"
            )

    def _failed_now(self) -> list[str]:
        """Points that failed with the current template (earlier failures were re-queued or are final)."""
        return [pid for pid, s in self.ctx.state.items() if not s["ok"] and s["template"] == self.ctx.template_number]

    def _children(self) -> dict:
        """Children already called, by link label (a step re-run after a restart finds what it launched before)."""
        links = self.node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)).all()
        return {link.link_label: link.node for link in links}

    def _child(self, label: str):
        """The child called `label`, if any: one lookup by label, not a read of every child (a point's record asks
        once per point; reading all children each time grew with the square of the points)."""
        from aiida.common.escaping import escape_for_sql_like

        links = self.node.base.links.get_outgoing(
            link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC), link_label_filter=escape_for_sql_like(label)
        ).all()
        return max((link.node for link in links), key=lambda node: node.pk) if links else None  # the newest

    def _job_inputs(self, point: Point) -> dict:
        lammps = {
            "code": self.inputs.agent.code,
            "script": self.ctx.template,
            "variables": orm.Dict(point.vars),
            "metadata": {"options": self.inputs.agent.options.get_dict()},
        }
        for group, nodes in self.ctx.job_files.items():
            if nodes:
                lammps[group] = {key: orm.load_node(pk) for key, pk in nodes.items()}
        return lammps

    def _submit_point(self, point: Point, label: str):
        site = self.inputs.agent.site.get_dict()
        return self.submit(
            LammpsJobWorkChain,
            lammps=self._job_inputs(point),
            on_failure=orm.Dict(site.get("on_failure", {})),
            site=orm.Str(site.get("name", "local")),
            metadata={"call_link_label": label},
        )

    def _submit_pilot(self, batch: list[str], label: str):
        from mdagent_hpc.workflows.pilot_job import PilotBaseWorkChain

        files = {
            key: orm.load_node(pk) for group in ("files", "potentials") for key, pk in self.ctx.job_files[group].items()
        }
        points = [{"id": pid, "vars": self.ctx.points[pid]["vars"]} for pid in batch]
        given = self.inputs.get("pilot", {})
        pilot = {
            "template": self.ctx.template,
            "files": files,
            "points": orm.Dict({"points": points}),
            "site": given.get("site") or orm.Str(self.inputs.agent.site.get("name", "local")),
            "sweep_folder": self.inputs.sweep_folder,
        }
        if "code" in given:
            pilot["code"] = given["code"]
        self.report(f"running {len(batch)} point(s) with template {self.ctx.template_number} in Parsl pilot jobs")
        return self.submit(
            PilotBaseWorkChain,
            pilot=pilot,
            max_iterations=given.get("max_iterations") or orm.Int(3),
            metadata={"call_link_label": label},
        )
