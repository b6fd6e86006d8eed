"""The `mdagent` command. Exit codes: 0 clean, 1 the check found errors, 2 bad input or setup."""

from __future__ import annotations

import json
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
                else _nothing():
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


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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


if __name__ == "__main__":
    main()
