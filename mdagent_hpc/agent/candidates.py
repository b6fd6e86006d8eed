"""Best of k: which of the scripts one request returned goes on, judged by their preflight reports. Pure."""

from __future__ import annotations

from mdagent_hpc.agent.loop import script_sha
from mdagent_hpc.models import Candidate, Diagnostic, PreflightReport, Severity


def judge(
    scripts: dict[int, str | None],
    reports: dict[int, PreflightReport],
    problems: dict[int, list[Diagnostic]] | None = None,
) -> list[Candidate]:
    """Every candidate's verdict, best first; the best is `chosen` (None of them when none has a script).

    `scripts`: answer number -> its script (None: the answer held none); `reports`: the preflight of each script;
    `problems`: what else stops a candidate (refused file names). Order: passed preflight, then fewer errors,
    then fewer warnings, then the model's own order.
    """
    verdicts = []
    for number, script in sorted(scripts.items()):
        if script is None:
            verdicts.append(Candidate(number=number, errors=1, first_error="generate.no_script: no script"))
            continue
        report = reports[number]
        diagnostics = [*(problems or {}).get(number, []), *report.diagnostics]
        errors = [d for d in diagnostics if d.severity == Severity.ERROR]
        verdicts.append(
            Candidate(
                number=number,
                script_sha=script_sha(script),
                ok=not errors,
                errors=len(errors),
                warnings=sum(d.severity == Severity.WARNING for d in diagnostics),
                first_error=f"{errors[0].code}: {errors[0].message}" if errors else None,
            )
        )
    verdicts.sort(key=lambda c: (c.script_sha is None, not c.ok, c.errors, c.warnings, c.number))
    if verdicts and verdicts[0].script_sha is not None:
        verdicts[0].chosen = True
    return verdicts
