"""The `mdagent` command. Exit codes: 0 clean, 1 the check found errors, 2 bad input or setup."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mdagent_hpc.models import Diagnostic, Severity

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class UserError(click.ClickException):
    """One clear sentence for the user, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ARG002 (click's signature)
        err.print(f"[bold red]error:[/] {self.message}", highlight=False)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def example_path(name: str) -> Path:
    root = resources.files("mdagent_hpc") / "examples"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if name not in names:
        raise UserError(f"no bundled example '{name}'; choose one of: {', '.join(names)}")
    folder = Path(str(root / name))
    return next(folder.glob("in.*"))


def print_diagnostics(diags: list[Diagnostic]) -> None:
    style = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
    for d in diags:
        where = f"{d.file or ''}:{d.line}" if d.line else (d.file or "")
        out.print(f"[{style[d.severity]}]{d.severity.value:7}[/] {where:18} [dim]{d.code}[/] {d.message}",
                  highlight=False)
        if d.command:
            out.print(f"        [dim]> {d.command[:160]}[/]", highlight=False)
        if d.hint:
            out.print(f"        hint: {d.hint}", highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdagent-hpc")
def main() -> None:
    """Plain-language LAMMPS simulations, generated, checked, run and evaluated by an LLM agent."""
    from mdagent_hpc.execution.profile import configure_environment

    configure_environment()  # before anything imports AiiDA, which reads AIIDA_PATH once


@main.command()
@click.argument("script", type=click.Path(path_type=Path), required=False)
@click.option("--example", help="check a bundled example instead of SCRIPT (melt, cu-eam)")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), help="run folder (default: the script's)")
@click.option("--no-dry-run", is_flag=True, help="skip `lmp -skiprun` (parse, policy, potentials, static checks only)")
@click.option("--strict", is_flag=True, help="warnings fail too")
@click.option("--max-atoms", type=int, help="atom limit for the policy")
@click.option("--max-steps", type=int, help="step limit for the policy")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def check(script, example, run_dir, no_dry_run, strict, max_atoms, max_steps, as_json) -> None:
    """Preflight SCRIPT: parse, sandbox policy, potentials, static checks and a `lmp -skiprun` dry run."""
    from mdagent_hpc.lammps.install import LammpsNotFound
    from mdagent_hpc.lammps.preflight import preflight
    from mdagent_hpc.models import Limits

    if example:
        script = example_path(example)
    if script is None:
        raise UserError("give a script to check, e.g. `mdagent check in.melt` or `mdagent check --example melt`")
    if run_dir is not None and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    limits = Limits(**{k: v for k, v in {"max_atoms": max_atoms, "max_steps": max_steps}.items() if v})
    try:
        with err.status("preflight: parse, policy, potentials, dry run ...", spinner="dots") if not as_json \
                else contextlib.nullcontext():
            report = preflight(script, run_dir, limits=limits, dry=not no_dry_run)
    except LammpsNotFound as exc:
        raise UserError(str(exc)) from None
    unreadable = [d for d in report.diagnostics if d.code == "script.unreadable"]
    if unreadable:
        raise UserError(unreadable[0].message)
    failed = not report.ok or (strict and any(d.severity == Severity.WARNING for d in report.diagnostics))
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        print_diagnostics(report.diagnostics)
        for p in report.potentials:
            out.print(f"potential {p.name} ({p.pair_style}, {' '.join(p.elements)}) <- {p.source}: "
                      f"{p.resolved} md5 {p.md5}", highlight=False)
        verdict = "[bold red]FAILED[/]" if failed else "[bold green]OK[/]"
        dry = f", dry run {report.skiprun_seconds:.2f} s" if report.skiprun_seconds is not None else ""
        out.print(f"{verdict} {report.script}: {sum(d.severity == Severity.ERROR for d in report.diagnostics)} "
                  f"error(s), {sum(d.severity == Severity.WARNING for d in report.diagnostics)} warning(s) "
                  f"in {report.seconds:.2f} s{dry}")
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--script", type=click.Path(path_type=Path), help="the input script, for thermostat targets")
@click.option("--json", "as_json", is_flag=True, help="print the evaluation as JSON")
def evaluate(log, script, as_json) -> None:
    """Judge a finished LAMMPS run from its LOG: completion, errors, stability, targets, drift."""
    from mdagent_hpc.lammps.evaluate import evaluate as judge
    from mdagent_hpc.lammps.log import LogError, read_log
    from mdagent_hpc.lammps.parser import ScriptError, parse_script
    from mdagent_hpc.models import Grade

    try:
        parsed_log = read_log(log)
        parsed_script = parse_script(script) if script else None
    except (LogError, ScriptError) as exc:
        raise UserError(str(exc)) from None
    result = judge(parsed_log, parsed_script)
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        style = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
        for f in result.findings:
            out.print(f"[{style[f.severity]}]{f.severity.value:7}[/] [dim]{f.rule}[/] {f.message}", highlight=False)
            if f.hint and f.severity != Severity.INFO:
                out.print(f"        hint: {f.hint}", highlight=False)
        color = {"pass": "green", "warn": "yellow", "fail": "red"}[result.grade.value]
        out.print(f"[bold {color}]{result.grade.value.upper()}[/] reward {result.reward:.2f}")
    sys.exit(1 if result.grade == Grade.FAIL else 0)


@main.group()
def potentials() -> None:
    """Search the potential files available here."""


@potentials.command("find")
@click.argument("elements", nargs=-1, required=True)
@click.option("--style", help="pair style, e.g. eam/alloy, tersoff, meam")
@click.option("--json", "as_json", is_flag=True, help="print matches as JSON")
def potentials_find(elements, style, as_json) -> None:
    """Potential files covering all ELEMENTS (e.g. `mdagent potentials find Cu Ni --style eam/alloy`)."""
    from mdagent_hpc.lammps.potentials import find_potentials

    bad = [e for e in elements if not (e[:1].isupper() and e.isalpha() and len(e) <= 2)]
    if bad:
        raise UserError(f"{', '.join(bad)} is not an element symbol (write Cu, Ni, ...)")
    matches = find_potentials(list(elements), style)
    if as_json:
        emit_json([m.model_dump(mode="json") for m in matches])
    elif matches:
        table = Table("file", "styles", "elements", "folder", "md5")
        for m in matches:
            table.add_row(m.name, " ".join(m.styles) or "?", " ".join(m.elements), str(Path(m.path).parent), m.md5[:12])
        out.print(table)
    else:
        out.print(f"no potential file covers {' '.join(elements)}{' for ' + style if style else ''}; "
                  "try without --style, or put a file in the run folder or MDAGENT_SITE_POTENTIALS")
    sys.exit(0 if matches else 1)


# -- the agent ------------------------------------------------------------------------------------------------
def _load_aiida():
    from mdagent_hpc.execution.profile import ProfileError, ensure_profile

    try:
        return ensure_profile()
    except ProfileError as exc:
        raise UserError(str(exc)) from None


def _live_reports() -> None:
    """Print the workflow's `report` messages as they happen."""
    import logging

    class Live(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                err.print(f"[yellow]{msg}[/]", highlight=False)
            else:
                err.print(f"[dim]•[/] {msg}", highlight=False)

    for handler in logging.getLogger("aiida").handlers:  # AiiDA's own console echo would print each twice
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.WARNING)
    logger = logging.getLogger("aiida.orm.nodes.process.workflow.workchain.WorkChainNode")
    logger.addHandler(Live(level=23))  # AiiDA's REPORT level


@main.command()
@click.argument("task")
@click.option("--site", "site_name", help="where LAMMPS runs (`mdagent site list`; default: this machine)")
@click.option("--daemon", is_flag=True, help="submit to the AiiDA daemon and return at once")
@click.option("--max-attempts", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--model", help="model name (default: MDAGENT_LLM_MODEL, else the first the server lists)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def run(task, site_name, daemon, max_attempts, model, as_json) -> None:
    """Generate, check, run and evaluate LAMMPS for TASK, correcting until it passes."""
    from mdagent_hpc.llm import LLMError, load_llm_settings
    from mdagent_hpc.workflows.generate import STORED_SETTINGS

    words = task.split()
    if len(words) < 3 or len(task) > 4000:
        raise UserError("describe the simulation in a sentence (3 words to 4000 characters), e.g. "
                        "\"Melt a 4000-atom Cu crystal with EAM at 2000 K\"")
    try:
        settings = load_llm_settings({"model": model} if model else None)
    except LLMError as exc:
        raise UserError(str(exc)) from None
    site = _site(site_name)
    _load_aiida()
    from aiida import orm
    from aiida.engine import submit

    from mdagent_hpc.execution.computers import workflow_inputs
    from mdagent_hpc.execution.profile import run_here
    from mdagent_hpc.execution.site import SiteConfigError
    from mdagent_hpc.models import LoopPolicy
    from mdagent_hpc.workflows.agent import AgentWorkChain

    llm = {k: v for k, v in settings.model_dump(mode="json").items() if k in STORED_SETTINGS and v is not None}
    try:
        site_inputs = workflow_inputs(site)
    except SiteConfigError as exc:
        raise UserError(str(exc)) from None
    inputs = {"task": orm.Str(task), "llm": orm.Dict(llm), **site_inputs,
              "loop": orm.Dict(LoopPolicy(max_attempts=max_attempts).model_dump(mode="json"))}
    if daemon:
        _ensure_daemon()
        node = submit(AgentWorkChain, **inputs)
        if as_json:
            emit_json({"pk": node.pk, "uuid": node.uuid, "state": "submitted"})
        else:
            out.print(f"submitted: pk {node.pk}; follow it with `mdagent show {node.pk}`")
        return
    if not as_json:
        _live_reports()
    _, node = run_here(AgentWorkChain, **inputs)
    summary = run_summary(node)
    if as_json:
        emit_json(summary)
    else:
        print_summary(summary)
    sys.exit(0 if node.is_finished_ok else 1)


def _site(name: str | None):
    """The named site config, or the embedded default (this machine, sandboxed) when no name is given."""
    from mdagent_hpc.execution.computers import local_site
    from mdagent_hpc.execution.registry import find_site
    from mdagent_hpc.execution.site import SiteConfigError

    if name is None:
        return local_site()
    try:
        return find_site(name)
    except SiteConfigError as exc:
        raise UserError(str(exc)) from None


# -- sites ----------------------------------------------------------------------------------------------------
@main.group()
def site() -> None:
    """Clusters and machines LAMMPS runs on (site configs)."""


@site.command("add")
@click.argument("file", type=click.Path(path_type=Path))
def site_add(file) -> None:
    """Validate FILE, keep it as your site config, and create or update its AiiDA computer and code."""
    from mdagent_hpc.execution.computers import ensure_site
    from mdagent_hpc.execution.registry import add_site
    from mdagent_hpc.execution.site import SiteConfigError

    try:
        config, dest, changed = add_site(file)
        _load_aiida()
        setup = ensure_site(config)
    except SiteConfigError as exc:
        raise UserError(str(exc)) from None
    out.print(f"site {config.name}: {'saved' if changed else 'unchanged'} {dest}", highlight=False)
    for change in setup.changes or [f"computer {config.name} and code {setup.code.full_label} up to date"]:
        out.print(f"  {change}", highlight=False)
    out.print(f"next: `mdagent site test {config.name}`", highlight=False)


@site.command("list")
@click.option("--json", "as_json", is_flag=True)
def site_list(as_json) -> None:
    """The site configs found (your folder, MDAGENT_SITE_CONFIGS, the bundled ones), first one of a name wins."""
    from mdagent_hpc.execution.registry import site_files
    from mdagent_hpc.execution.site import SiteConfigError, load_site

    rows = []
    for name, path in sorted(site_files().items()):
        try:
            config = load_site(path)
            rows.append({"name": name, "scheduler": config.scheduler, "transport": config.transport.type,
                         "host": config.transport.host or "localhost",
                         "lammps": config.lammps.image or config.lammps.binary, "path": str(path), "problem": None})
        except SiteConfigError as exc:
            rows.append({"name": name, "path": str(path), "problem": exc.problems[0]})
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "scheduler", "transport", "host", "lammps", "file")
    for r in rows:
        if r["problem"]:
            table.add_row(r["name"], "[red]invalid[/]", "", "", r["problem"], r["path"])
        else:
            table.add_row(r["name"], r["scheduler"], r["transport"], r["host"], r["lammps"], r["path"])
    out.print(table)


@site.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def site_test_command(name, as_json) -> None:
    """Connect to site NAME, query its scheduler, run a 1-step LAMMPS job and read it back, timing each stage."""
    from mdagent_hpc.execution.probe import probe_site

    config = _site(name)
    _load_aiida()
    stages = []
    for stage in probe_site(config) if as_json else _with_progress(probe_site(config)):
        stages.append(stage)
        if not as_json:
            mark = "[green]ok[/]  " if stage.ok else "[bold red]FAIL[/]"
            out.print(f"{mark} {stage.name:11} {stage.seconds:6.2f} s  {stage.detail}", highlight=False)
            if stage.fix:
                out.print(f"     fix: {stage.fix}", highlight=False)
    ok = all(s.ok for s in stages) and len(stages) == 5
    if as_json:
        emit_json({"site": name, "ok": ok, "stages": [vars(s) for s in stages]})
    else:
        total = sum(s.seconds for s in stages)
        out.print(f"{'[bold green]site ' + name + ' works[/]' if ok else '[bold red]site ' + name + ' failed[/]'} "
                  f"in {total:.1f} s", highlight=False)
    sys.exit(0 if ok else 1)


def _with_progress(stages):
    """Show a spinner while each stage runs (submitting and waiting for a job can take a while)."""
    names = iter(["creating the AiiDA computer and code", "connecting", "asking the scheduler",
                  "running a 1-step LAMMPS job", "reading it back"])
    while True:
        with err.status(f"{next(names, 'working')} ...", spinner="dots"):
            stage = next(stages, None)
        if stage is None:
            return
        yield stage


DEMO_TASK = "Heat a small Cu crystal with EAM to 800 K in NVT and report its temperature"
DEMO_ANSWERS = ("wrong-potential.lammps", "lost-atoms.lammps", "good.lammps")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def demo(ctx, as_json) -> None:
    """The whole loop with a replayed model: a wrong potential file, then lost atoms, then a good script.

    Real AiiDA, real preflight, real LAMMPS in the sandbox, real evaluation; only the model's three answers are
    recorded, served by a local OpenAI-compatible replay server. Use `mdagent run` for a real model.
    """
    from mdagent_hpc.llm.replay import FakeOpenAIServer

    folder = resources.files("mdagent_hpc") / "examples" / "demo"
    answers = [json.dumps({"script": (folder / name).read_text(), "files": [], "potentials": [], "notes": ""})
               for name in DEMO_ANSWERS]
    with FakeOpenAIServer(answers, model="replay") as server:
        os.environ.update({"MDAGENT_LLM_BASE_URL": server.base_url, "MDAGENT_LLM_MODEL": "replay",
                           "MDAGENT_LLM_API_KEY": "EMPTY", "MDAGENT_LLM_MAX_RETRIES": "0"})
        if not as_json:
            err.print(f"replaying {len(answers)} recorded answers from {server.base_url}")
        ctx.invoke(run, task=DEMO_TASK, site_name=None, daemon=False, max_attempts=len(answers), model=None,
                   as_json=as_json)


def _ensure_daemon() -> None:
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    if not client.is_daemon_running:
        with err.status("starting the AiiDA daemon ...", spinner="dots"):
            client.start_daemon(number_workers=1)


def run_summary(node) -> dict:
    """What a user wants to know about one agent run, from its node and the nodes it called."""
    from aiida.common.links import LinkType

    called = {link.link_label: link.node for link in
              node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()}
    attempts = []
    for n in range(1, int(node.base.extras.get("attempts", 0)) + 1):
        step = {"attempt": n}
        gen = called.get(f"generate_{n}")
        if gen is not None:
            step["generate"] = {"pk": gen.pk, "exit_status": gen.exit_status}
            if "script" in gen.outputs:
                step["script"] = gen.outputs.script.get_content()
        if (pre := called.get(f"preflight_{n}")) is not None:
            report = pre.outputs.result.get_dict()
            step["preflight"] = {"pk": pre.pk, "ok": report["ok"], "diagnostics": report["diagnostics"]}
        if (calc := called.get(f"run_{n}")) is not None:
            step["run"] = {"pk": calc.pk, "exit_status": calc.exit_status, "workdir": calc.get_remote_workdir()}
        if (ev := called.get(f"evaluate_{n}")) is not None:
            result = ev.outputs.result.get_dict()
            step["evaluation"] = {"pk": ev.pk, "grade": result["grade"], "reward": result["reward"],
                                  "findings": result["findings"]}
        attempts.append(step)
    extras = node.base.extras.all
    return {"pk": node.pk, "uuid": node.uuid, "task": extras.get("task"), "state": node.process_state.value
            if node.process_state else None, "exit_status": node.exit_status, "exit_message": node.exit_message,
            "verdict": extras.get("verdict"), "grade": extras.get("grade"), "reward": extras.get("reward"),
            "ctime": node.ctime.isoformat(), "attempts": attempts}


def print_summary(summary: dict) -> None:
    import difflib

    previous = None
    for step in summary["attempts"]:
        out.rule(f"attempt {step['attempt']}")
        script = step.get("script")
        if script and previous:
            diff = difflib.unified_diff(previous.splitlines(), script.splitlines(), "previous", "this", lineterm="")
            out.print("\n".join(diff) or "(same script)", highlight=False)
        elif script:
            out.print(script, highlight=False)
        previous = script or previous
        if "preflight" in step and not step["preflight"]["ok"]:
            print_diagnostics([Diagnostic(**d) for d in step["preflight"]["diagnostics"]])
        if "evaluation" in step:
            ev = step["evaluation"]
            out.print(f"evaluation: {ev['grade']} reward {ev['reward']:.2f}")
            for f in ev["findings"]:
                if f["severity"] != "info":
                    out.print(f"  {f['severity']:7} {f['rule']}: {f['message']}", highlight=False)
        if "run" in step:
            out.print(f"outputs: {step['run']['workdir']}", highlight=False)
    verdict = summary["verdict"]
    color = "green" if verdict == "passed" else "red"
    grade = f", grade {summary['grade']} (reward {summary['reward']:.2f})" if summary.get("grade") else ""
    reason = f": {summary['exit_message']}" if summary.get("exit_message") else ""
    out.print(f"[bold {color}]{verdict}[/]{grade} after {len(summary['attempts'])} attempt(s){reason}; "
              f"pk {summary['pk']}")


@main.command()
@click.argument("pk", type=int)
@click.option("--json", "as_json", is_flag=True)
def show(pk, as_json) -> None:
    """The story of one run: each attempt's script diff, diagnostics and evaluation."""
    _load_aiida()
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    from mdagent_hpc.workflows.agent import AgentWorkChain

    try:
        node = orm.load_node(pk)
    except NotExistent:
        raise UserError(f"no node with pk {pk}; `mdagent runs` lists the runs") from None
    if node.process_class is not AgentWorkChain:
        raise UserError(f"node {pk} is not an agent run; `mdagent runs` lists the runs")
    summary = run_summary(node)
    if as_json:
        emit_json(summary)
    else:
        print_summary(summary)


@main.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(limit, as_json) -> None:
    """Recent agent runs: task, verdict, grade, attempts, time."""
    _load_aiida()
    from aiida import orm

    qb = orm.QueryBuilder().append(orm.WorkChainNode, filters={"attributes.process_label": "AgentWorkChain"},
                                   project=["*"], tag="run").order_by({"run": {"ctime": "desc"}}).limit(limit)
    rows = []
    for (node,) in qb.all():
        extras = node.base.extras.all
        seconds = (node.mtime - node.ctime).total_seconds()
        rows.append({"pk": node.pk, "task": extras.get("task"), "verdict": extras.get("verdict"),
                     "grade": extras.get("grade"), "attempts": extras.get("attempts"),
                     "ctime": node.ctime.isoformat(timespec="seconds"), "seconds": round(seconds, 1)})
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out.print("no agent runs yet; start one with `mdagent run \"TASK\"` (or try `mdagent demo`)")
        return
    table = Table("pk", "task", "verdict", "grade", "attempts", "started", "s")
    for r in rows:
        table.add_row(str(r["pk"]), (r["task"] or "")[:60], r["verdict"] or "", r["grade"] or "",
                      str(r["attempts"]), r["ctime"], str(r["seconds"]))
    out.print(table)


from mdagent_hpc.cli_image import image  # noqa: E402 (the group is defined apart from the core commands)

main.add_command(image)

if __name__ == "__main__":
    main()
