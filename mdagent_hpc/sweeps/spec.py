"""A parameter sweep, as data: the spec, its points, the site's limits, the engine it runs on, what the model hears.

Pure (pydantic only). One LAMMPS template serves every point: each swept parameter is a LAMMPS `index` variable
the template defines with a default, and each point runs `lmp -var NAME VALUE ...`, which overrides the default.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mdagent_hpc.errors import MDAgentError
from mdagent_hpc.models import LoopPolicy

Value = int | float | str
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.+-]+$")
MAX_VALUES = 10_000

# `auto`: the pilot engine (Parsl) for many short points, where one queue wait per point would dominate;
# one CalcJob per point otherwise (each job queued, watched and retried by AiiDA on its own).
PILOT_MIN_POINTS = 10
PILOT_MAX_POINT_SECONDS = 1800


class SweepError(MDAgentError):
    """A sweep that cannot run as given, in one sentence for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Parameter(_Strict):
    """One swept quantity: a LAMMPS variable taking either the listed values or start, start+step, ..., stop."""

    name: str = Field(description="the LAMMPS variable name the template uses, e.g. T for ${T}")
    values: list[Value] | None = Field(None, description="explicit values (or give start, stop and step)")
    start: float | None = None
    stop: float | None = Field(None, description="included when start + k*step reaches it")
    step: float | None = Field(None, gt=0)
    units: str = Field("", description="e.g. K, bar, atoms (shown in the table and plot)")

    @field_validator("name")
    @classmethod
    def _variable_name(cls, value: str) -> str:
        if not VARIABLE.match(value):
            raise ValueError(f"{value!r} is not a LAMMPS variable name (letters, digits, underscores)")
        return value

    @model_validator(mode="after")
    def _values_or_range(self) -> Parameter:
        ranged = [self.start, self.stop, self.step]
        if self.values is not None:
            if any(v is not None for v in ranged):
                raise ValueError(f"{self.name}: give values or start/stop/step, not both")
            if not self.values:
                raise ValueError(f"{self.name}: values is empty")
            if len(self.values) > MAX_VALUES:
                raise ValueError(f"{self.name}: more than {MAX_VALUES} values")
            if any(isinstance(v, float) and not math.isfinite(v) for v in self.values):
                raise ValueError(f"{self.name}: values must be finite numbers")
            if len(set(map(str, self.values))) != len(self.values):
                raise ValueError(f"{self.name}: values repeat")
            words = [v for v in self.values if isinstance(v, str) and not PLAIN_WORD.match(v)]
            if words:
                raise ValueError(
                    f"{self.name}: {words[0]!r} is not a plain word (letters, digits, _ . + -): values "
                    "go on the LAMMPS command line"
                )
        elif any(v is None for v in ranged):
            raise ValueError(f"{self.name}: give values, or all of start, stop and step")
        elif not all(math.isfinite(v) for v in ranged):
            raise ValueError(f"{self.name}: start, stop and step must be finite numbers")
        elif self.stop < self.start:
            raise ValueError(f"{self.name}: stop ({self.stop:g}) is below start ({self.start:g})")
        elif (self.stop - self.start) / self.step + 1 > MAX_VALUES:
            raise ValueError(f"{self.name}: more than {MAX_VALUES} values")
        return self

    @property
    def count(self) -> int:
        """How many values, counted without listing them."""
        if self.values is not None:
            return len(self.values)
        return math.floor((self.stop - self.start) / self.step + 1e-9) + 1

    def expanded(self) -> list[Value]:
        """The values in order; a range's values are rounded to the step's precision and kept integral if they are."""
        if self.values is not None:
            return list(self.values)
        decimals = max(0, -math.floor(math.log10(self.step)) + 6)
        values = [round(self.start + i * self.step, decimals) for i in range(self.count)]
        return [int(v) if float(v).is_integer() else v for v in values]

    def label(self) -> str:
        return f"{self.name} ({self.units})" if self.units else self.name


# thermo_style keyword -> the column header LAMMPS prints for it (others, e.g. c_msd[4] or v_a, print as written)
THERMO_HEADERS = {
    "step": "Step",
    "temp": "Temp",
    "press": "Press",
    "pe": "PotEng",
    "ke": "KinEng",
    "etotal": "TotEng",
    "enthalpy": "Enthalpy",
    "evdwl": "E_vdwl",
    "ecoul": "E_coul",
    "epair": "E_pair",
    "ebond": "E_bond",
    "emol": "E_mol",
    "vol": "Volume",
    "density": "Density",
    "lx": "Lx",
    "ly": "Ly",
    "lz": "Lz",
    "xlo": "Xlo",
    "xhi": "Xhi",
    "pxx": "Pxx",
    "pyy": "Pyy",
    "pzz": "Pzz",
    "pxy": "Pxy",
    "pxz": "Pxz",
    "pyz": "Pyz",
    "atoms": "Atoms",
    "cpu": "CPU",
}


class Observable(_Strict):
    """A number reported per point, read from the thermo output of the production segment (the last MD run)."""

    name: str = Field(description="the column name in the results table, e.g. volume")
    column: str = Field(description="the thermo_style custom keyword the template must print, e.g. vol, temp, lx")
    stat: Literal["mean", "final", "min", "max"] = Field(
        "mean", description="over the production rows after the first; mean comes with a block-average uncertainty"
    )
    units: str = ""
    blocks: int = Field(5, ge=2, le=100, description="blocks for the uncertainty of a mean")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not VARIABLE.match(value):
            raise ValueError(f"{value!r}: use letters, digits and underscores")
        return value

    @property
    def header(self) -> str:
        """The column header in the log."""
        return THERMO_HEADERS.get(self.column.lower(), self.column)

    def label(self) -> str:
        return f"{self.name} ({self.units})" if self.units else self.name


class SweepProposal(_Strict):
    """What the model proposes for a plain-language study (asked for by structured output)."""

    task: str = Field(
        min_length=10,
        max_length=4000,
        description="one simulation of the study in plain language, naming each swept parameter by "
        "its variable name, e.g. 'NPT of fcc Al (EAM) at temperature T and 0 bar, ...'",
    )
    parameters: list[Parameter] = Field(min_length=1, max_length=3)
    observables: list[Observable] = Field(min_length=1, max_length=8)
    point_seconds: float = Field(600.0, gt=0, description="estimated wall seconds of one point")
    engine: Literal["auto", "parsl", "calcjob"] = "auto"

    @model_validator(mode="after")
    def _unique_names(self) -> SweepProposal:
        for what, names in (
            ("parameter", [p.name for p in self.parameters]),
            ("observable", [o.name for o in self.observables]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"two {what}s have the same name")
        return self


class SweepSpec(SweepProposal):
    """A whole sweep as a file in workflows/sweeps/ holds it: the proposal plus where, how hard, recorded answers."""

    probe: list[dict[str, Value]] | None = Field(
        None, description="points the template is validated on first; None: the range's extremes"
    )
    corrections: int = Field(1, ge=0, le=5, description="times failed points go back to the agent")
    site: str | None = Field(None, description="a site config name; None: this machine, sandboxed")
    model: str | None = None
    loop: LoopPolicy = Field(default_factory=lambda: LoopPolicy())
    answers: list[str] | None = Field(None, description="recorded model answers, replayed in order")
    description: str | None = None


class SweepLimits(_Strict):
    """What a site allows one sweep (the `sweep:` section of a site config)."""

    max_points: int = Field(1000, ge=1)
    max_core_hours: float = Field(1000.0, gt=0, description="points x cores per point x seconds per point")
    max_concurrent_jobs: int = Field(8, ge=1, description="LAMMPS jobs of one sweep in the queue at once")
    point_seconds: float | None = Field(
        None,
        gt=0,
        description="the least a point is counted at before the validation run measures one (a spec's own "
        "point_seconds may only count more); None: the site's job walltime",
    )


class Point(_Strict):
    id: str = Field(description="stable: built from the values, e.g. T_300__P_0")
    vars: dict[str, Value]


def _word(value: Value) -> str:
    text = str(value).replace("-", "m").replace(".", "p").replace("+", "")
    return re.sub(r"\W", "_", text)


def point_id(vars: dict[str, Value]) -> str:
    return "__".join(f"{name}_{_word(value)}" for name, value in vars.items())


def point_count(spec: SweepProposal) -> int:
    """How many points `expand` would build: the product of the parameters' value counts (nothing is built)."""
    return math.prod(p.count for p in spec.parameters)


def expand(spec: SweepProposal) -> list[Point]:
    """Every point: the cartesian product of the parameters' values, the first parameter varying slowest.

    Check the size with `validate_sweep` (or `point_count`) first: three parameters may make 10^12 points."""
    names = [p.name for p in spec.parameters]
    return [
        Point(id=point_id(dict(zip(names, combo, strict=True))), vars=dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(p.expanded() for p in spec.parameters))
    ]


def probe_points(spec: SweepSpec, points: list[Point]) -> list[Point]:
    """The points to validate the template on: the spec's, else every parameter at its lowest and at its highest."""
    if spec.probe is not None:
        by_id = {point_id(p.vars): p for p in points}
        chosen = []
        for wanted in spec.probe:
            key = point_id({p.name: wanted.get(p.name) for p in spec.parameters})
            if key not in by_id:
                raise SweepError(f"probe point {wanted} is not one of the sweep's points")
            chosen.append(by_id[key])
        return chosen
    ends = []
    for pick in (min, max):
        vars = {p.name: pick(p.expanded(), key=_order) for p in spec.parameters}
        point = next(q for q in points if q.vars == vars)
        if point not in ends:
            ends.append(point)
    return ends


def _order(value: Value):
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def ordered(points: list[Point], probes: list[Point]) -> list[Point]:
    """Probe points first, then the rest in sweep order."""
    return probes + [p for p in points if p not in probes]


def counted_seconds(spec: SweepProposal, limits: SweepLimits, walltime: float) -> float:
    """The seconds one point counts for before one is measured: the spec's estimate, never less than the site's
    (`sweep.point_seconds`, else the job walltime), so a spec cannot declare its way under the core-hour cap."""
    return max(spec.point_seconds, limits.point_seconds or walltime)


def core_hours(points: int, cores_per_point: int, point_seconds: float) -> float:
    return points * cores_per_point * point_seconds / 3600


def validate_sweep(
    spec: SweepProposal, limits: SweepLimits, *, walltime: float, cores_per_point: int = 1, site: str = "local"
) -> None:
    """Raise SweepError (one sentence) when the sweep exceeds what the site allows; its points are counted, not
    built, so this is cheap however large the sweep: call it before `expand`. `walltime`: of one point's job."""
    points = point_count(spec)
    if points > limits.max_points:
        raise SweepError(
            f"the sweep has {points} points; site {site} allows at most {limits.max_points} "
            "(sweep.max_points in its config): use a coarser step or fewer values"
        )
    seconds = counted_seconds(spec, limits, walltime)
    hours = core_hours(points, cores_per_point, seconds)
    if hours > limits.max_core_hours:
        raise SweepError(
            f"the sweep needs about {hours:.1f} core-hours ({points} points x {cores_per_point} "
            f"cores x {seconds:g} s); site {site} allows {limits.max_core_hours:g} "
            "(sweep.max_core_hours): fewer points, shorter runs or a site with a larger budget"
        )


def choose_engine(spec: SweepProposal, points: int, has_pilot: bool, site: str = "local") -> tuple[str, str]:
    """(engine, why): the spec's choice, or for `auto` Parsl pilot jobs for many short points, else CalcJobs."""
    if spec.engine == "parsl" and not has_pilot:
        raise SweepError(
            f"engine parsl needs a `pilot:` section in site {site}'s config; use engine calcjob or "
            "auto, or add the pilot settings (docs/sweeps.md)"
        )
    if spec.engine != "auto":
        return spec.engine, "asked for in the spec"
    if not has_pilot:
        return "calcjob", f"site {site} has no pilot settings"
    if points >= PILOT_MIN_POINTS and spec.point_seconds <= PILOT_MAX_POINT_SECONDS:
        return "parsl", (
            f"{points} points of ~{spec.point_seconds:g} s: one pilot job runs many (no queue wait per point)"
        )
    return "calcjob", f"{points} points of ~{spec.point_seconds:g} s: one job per point"


def _values_text(p: Parameter) -> str:
    values = p.expanded()
    shown = ", ".join(map(str, values)) if len(values) <= 8 else f"{values[0]} to {values[-1]} ({len(values)} values)"
    return f"{p.name} = {shown}{' ' + p.units if p.units else ''}"


def template_task(spec: SweepProposal, probe: Point) -> str:
    """The agent's task: the base task, plus how to write it as one template for every point."""
    columns = sorted({o.column for o in spec.observables})
    defaults = " ".join(f"`variable {name} index {value}`" for name, value in probe.vars.items())
    return (
        f"{spec.task}\n\n"
        "This script is a TEMPLATE for a parameter sweep: the same script runs once per point with "
        "`lmp -var NAME VALUE` on the command line. Swept parameters: "
        + "; ".join(_values_text(p) for p in spec.parameters)
        + ". "
        f"Define each one near the top exactly as an index variable with a default, {defaults}, and use it only "
        "through ${NAME} or v_NAME (never write a swept value as a number). The last run is the production "
        f"segment the results are read from: print thermo output during it with `thermo_style custom` including "
        f"{', '.join(columns)}, at least 20 thermo rows. The script must work at every point of the range."
    )


def correction_task(spec: SweepProposal, probe: Point, template: str, failures: dict[str, list[str]]) -> str:
    """The agent's task when points failed: the template, and what went wrong at which point (once, all points)."""
    shown = list(failures.items())[:10]
    lines = "\n".join(f"- point {pid}: " + "; ".join(problems[:3]) for pid, problems in shown)
    more = f"\n(and {len(failures) - len(shown)} more points)" if len(failures) > len(shown) else ""
    return (
        f"{template_task(spec, probe)}\n\n"
        f"The template below passed at its first point but failed at {len(failures)} point(s) of the sweep:\n"
        f"{lines}{more}\n\nCorrect it so that it works at every point. The template was:\n"
        f"```lammps\n{template.rstrip()}\n```"
    )


PROPOSAL_SYSTEM = """\
You plan parameter sweeps of LAMMPS molecular dynamics simulations. Given a study in plain language, answer with
one JSON object and nothing else, with these fields:
- task: ONE simulation of the study in plain language (system, size, potential, ensemble, equilibration and
  production lengths), naming each swept parameter by its short LAMMPS variable name (e.g. "at temperature T");
- parameters: for each swept quantity {"name": variable name, "start", "stop", "step"} or {"name", "values": [...]},
  with "units" (e.g. K, bar);
- observables: what to report per point, {"name", "column": a thermo_style custom keyword (temp, press, pe, ke,
  etotal, vol, density, lx, ly, lz, enthalpy), "stat": "mean" (over the production run, with an uncertainty),
  "final", "min" or "max", "units"};
- point_seconds: your estimate of the wall seconds one point takes on one core;
- engine: "auto".
Keep the study as asked: the same ranges, steps and observables."""


def proposal_messages(study: str) -> list[dict[str, str]]:
    """The chat messages asking the model for a SweepProposal of `study`."""
    return [{"role": "system", "content": PROPOSAL_SYSTEM}, {"role": "user", "content": study}]


def spec_key(stored: dict) -> str:
    """What makes two sweeps the same study (the spec as a sweep stores it, without recorded answers): a later
    sweep with the same key reuses an earlier one's template and passed points."""
    import hashlib
    import json

    fields = {k: v for k, v in stored.items() if k != "answers"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
