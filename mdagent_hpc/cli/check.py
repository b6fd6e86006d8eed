"""`mdagent check`: preflight a script without running it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mdagent_hpc.cli.main import UserError, emit_json, out, status
from mdagent_hpc.cli.options import json_option


def example_path(name: str) -> Path:
    """The input script of a bundled example (mdagent_hpc/examples/NAME/in.*)."""
    from importlib import resources

    root = resources.files("mdagent_hpc") / "examples"
    scripts = {p.name: next(Path(str(p)).glob("in.*"), None) for p in root.iterdir() if p.is_dir()}
    checkable = sorted(name for name, script in scripts.items() if script)
    if scripts.get(name) is None:
        why = "has no input script (in.*)" if name in scripts else "is not a bundled example"
        raise UserError(f"'{name}' {why}; choose one of: {', '.join(checkable)}")
    return scripts[name]


@click.command(short_help="Preflight a LAMMPS script without running it.")
@click.argument("script", type=click.Path(path_type=Path), required=False)
@click.option("--example", help="check a bundled example instead of SCRIPT (melt, cu-eam)")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), help="run folder (default: the script's)")
@click.option("--no-dry-run", is_flag=True, help="skip `lmp -skiprun` (parse, policy, potentials, static checks only)")
@click.option("--strict", is_flag=True, help="warnings fail too")
@click.option("--max-atoms", type=int, help="atom limit for the policy")
@click.option("--max-steps", type=int, help="step limit for the policy")
@json_option("the report")
def check(script, example, run_dir, no_dry_run, strict, max_atoms, max_steps, as_json) -> None:
    """Preflight SCRIPT: parse, sandbox policy, potentials, static checks and a `lmp -skiprun` dry run."""
    from mdagent_hpc import api
    from mdagent_hpc.cli.render import print_diagnostics
    from mdagent_hpc.models import Severity

    if example:
        script = example_path(example)
    if script is None:
        raise UserError("give a script to check, e.g. `mdagent check in.melt` or `mdagent check --example melt`")
    with status("preflight: parse, policy, potentials, dry run ...", quiet=as_json):
        report = api.check(script, run_dir=run_dir, dry_run=not no_dry_run, max_atoms=max_atoms, max_steps=max_steps)
    failed = not report.ok or (strict and any(d.severity == Severity.WARNING for d in report.diagnostics))
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        print_diagnostics(report.diagnostics)
        for p in report.potentials:
            out().print(
                f"potential {p.name} ({p.pair_style}, {' '.join(p.elements)}) <- {p.source}: {p.resolved} md5 {p.md5}",
                highlight=False,
            )
        verdict = "[bold red]FAILED[/]" if failed else "[bold green]OK[/]"
        dry = f", dry run {report.skiprun_seconds:.2f} s" if report.skiprun_seconds is not None else ""
        out().print(
            f"{verdict} {report.script}: {sum(d.severity == Severity.ERROR for d in report.diagnostics)} "
            f"error(s), {sum(d.severity == Severity.WARNING for d in report.diagnostics)} warning(s) "
            f"in {report.seconds:.2f} s{dry}"
        )
    sys.exit(1 if failed else 0)
