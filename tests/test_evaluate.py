import subprocess
from pathlib import Path

import pytest
from conftest import CORPUS, MANIFEST

from mdagent_hpc.lammps.evaluate import EvaluationThresholds, evaluate
from mdagent_hpc.lammps.install import find_lammps
from mdagent_hpc.lammps.log import parse_log, read_log
from mdagent_hpc.lammps.parser import parse_script
from mdagent_hpc.models import Command, Grade, ParsedScript, Severity

# 500 LJ atoms with a shifted (energy-conserving) cutoff
LJ = """units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 5 0 5 0 5
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
pair_modify shift yes
neighbor 0.3 bin
velocity all create {T} 4928459 loop geom
"""


def run(folder: Path, script: str) -> tuple[Path, Path]:
    """Run `script` with the real LAMMPS in `folder`; return (log, input) paths. Screen output: `screen`."""
    lmp = find_lammps()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.test").write_text(script)
    proc = subprocess.run(
        lmp.command("-in", "in.test", "-log", "log.lammps", "-nocite"),
        cwd=folder,
        env=lmp.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    (folder / "screen").write_text(proc.stdout)
    return folder / "log.lammps", folder / "in.test"


def rules(ev, severity=None):
    return {f.rule for f in ev.findings if severity is None or f.severity == severity}


def finding(ev, rule):
    return next(f for f in ev.findings if f.rule == rule)


def test_good_nvt_run_passes_with_its_target_matched(tmp_path):
    log, script = run(
        tmp_path, LJ.format(T=1.5) + "variable T equal 1.5\nfix 1 all nvt temp $T $T 0.5\nthermo 100\nrun 3000\n"
    )
    ev = evaluate(read_log(log))  # what ran is read from the input echo in the log
    assert ev.grade == Grade.PASS and ev.reward == 1.0, ev.findings
    target = finding(ev, "temperature_target")
    assert target.severity == Severity.INFO and target.threshold == 1.5
    assert abs(target.value - 1.5) < 0.1
    assert ev.summary["atoms"] == 500 and ev.summary["steps"] == 3000
    assert abs(ev.summary["final_temp"] - 1.5) < 0.3 and ev.summary["tau_per_day"] > 0
    # the screen output has no echo: the script tells what ran, with the same verdict
    screen = read_log(tmp_path / "screen")
    assert screen.commands == [] and "run_mapping" in rules(evaluate(screen), Severity.INFO)
    verdict = [(f.rule, f.severity, f.value, f.threshold) for f in ev.findings]
    assert [
        (f.rule, f.severity, f.value, f.threshold) for f in evaluate(screen, parse_script(script)).findings
    ] == verdict


def test_thermostat_that_does_not_reach_its_target_warns(tmp_path):
    # langevin damping of 1000 tau: the temperature hardly moves towards 2.0 in 10 tau
    log, script = run(
        tmp_path, LJ.format(T=2.4) + "fix 1 all nve\nfix 2 all langevin 2.0 2.0 1000.0 48279\nthermo 100\nrun 2000\n"
    )
    ev = evaluate(read_log(log), parse_script(script))
    assert ev.grade == Grade.WARN and 0.5 < ev.reward < 1.0
    target = finding(ev, "temperature_target")
    assert target.severity == Severity.WARNING and target.threshold == 2.0 and target.value < 1.6
    assert "damping" in target.hint


def test_temperature_far_from_target_fails_and_ramp_target_is_interpolated():
    header = "Per MPI rank memory allocation (min/avg/max) = 3 | 3 | 3 Mbytes\nStep Temp TotEng\n"
    rows = "".join(f"{s} {t} -5.0\n" for s, t in zip(range(0, 1100, 100), [1.0] * 11, strict=True))
    text = header + rows + "Loop time of 1 on 1 procs for 1000 steps with 500 atoms\nTotal wall time: 0:00:01\n"
    log = parse_log(text)
    hot = ParsedScript(
        main="in.x",
        commands=[
            Command(
                line=1,
                file="in.x",
                text="fix 1 all nvt temp 300 300 100",
                words="fix 1 all nvt temp 300 300 100".split(),
            ),
            Command(line=2, file="in.x", text="run 1000", words=["run", "1000"]),
        ],
    )
    assert finding(evaluate(log, hot), "temperature_target").severity == Severity.ERROR
    ramp = hot.model_copy(deep=True)
    ramp.commands[0].words = "fix 1 all nvt temp 0.2 1.2 0.5".split()
    target = finding(evaluate(log, ramp), "temperature_target")
    # the window is the last 5 rows, steps 600..1000, where the ramp target goes 0.8 -> 1.2
    assert target.threshold == pytest.approx(1.0) and target.severity == Severity.INFO


def test_nve_energy_drift_is_measured_and_grows_with_the_timestep(tmp_path):
    good_log, good_in = run(tmp_path / "good", LJ.format(T=1.5) + "fix 1 all nve\nthermo 20\nrun 600\n")
    bad_log, bad_in = run(tmp_path / "bad", LJ.format(T=1.5) + "fix 1 all nve\ntimestep 0.025\nthermo 20\nrun 600\n")
    good = finding(evaluate(read_log(good_log), parse_script(good_in)), "energy_drift")
    bad_ev = evaluate(read_log(bad_log), parse_script(bad_in))
    bad = finding(bad_ev, "energy_drift")
    assert good.severity == Severity.INFO and good.value < good.threshold
    assert bad.severity == Severity.WARNING and bad.value > bad.threshold > 0
    assert bad.value > 20 * good.value
    assert "timestep" in bad.hint and bad_ev.grade == Grade.WARN


def test_drift_is_per_atom_whatever_thermo_normalization(tmp_path):
    body = "fix 1 all nve\ntimestep 0.02\nthermo 20\n{modify}run 400\n"
    per_atom, _ = run(tmp_path / "yes", LJ.format(T=1.5) + body.format(modify=""))
    total, _ = run(tmp_path / "no", LJ.format(T=1.5) + body.format(modify="thermo_modify norm no\n"))
    a = finding(evaluate(read_log(per_atom)), "energy_drift").value
    b = finding(evaluate(read_log(total)), "energy_drift").value
    assert read_log(total).blocks[0].column("TotEng")[0] == pytest.approx(
        500 * read_log(per_atom).blocks[0].column("TotEng")[0], rel=1e-6
    )
    assert b == pytest.approx(a, rel=1e-3)


def test_lost_atoms_fail(tmp_path):
    hot = LJ.format(T=50.0) + "fix 1 all nve\ntimestep 1.0\nthermo 10\n"
    log, script = run(tmp_path / "error", hot + "run 100\n")
    ev = evaluate(read_log(log), parse_script(script))
    assert ev.grade == Grade.FAIL and ev.reward == 0.0
    assert {"lost_atoms", "lammps_error", "completion"} <= rules(ev, Severity.ERROR)
    assert "run 100" in finding(ev, "lammps_error").message and "timestep" in finding(ev, "lost_atoms").hint
    # `thermo_modify lost warn` lets the run finish, but the atoms are still gone
    log, script = run(tmp_path / "warn", hot + "thermo_modify lost warn\nrun 100\n")
    ev = evaluate(read_log(log), parse_script(script))
    assert ev.grade == Grade.FAIL and "lost_atoms" in rules(ev, Severity.ERROR)
    assert "completion" not in rules(ev) and "dangerous_builds" in rules(ev, Severity.WARNING)


def test_nan_thermo_fails(tmp_path):
    script = (
        "units lj\natom_style atomic\nregion box block 0 5 0 5 0 5\ncreate_box 1 box\n"
        "create_atoms 1 single 1 1 1\ncreate_atoms 1 single 1 1 1\ncreate_atoms 1 single 3 3 3\n"
        "mass 1 1.0\npair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5\nfix 1 all nve\n"
        "thermo 1\nthermo_modify lost ignore\nrun 3\n"
    )
    log, _ = run(tmp_path, script)
    ev = evaluate(read_log(log))
    assert ev.grade == Grade.FAIL
    nan = finding(ev, "nan")
    assert nan.severity == Severity.ERROR
    assert all(f"{name} = " in nan.message for name in ("Temp", "TotEng", "Press"))
    assert "E_pair = inf at step 0" in nan.message


def test_unknown_command_error_names_the_line(tmp_path):
    log, _ = run(tmp_path, LJ.format(T=1.0) + "fix 1 all nvy\nrun 10\n")
    ev = evaluate(read_log(log))
    err = finding(ev, "lammps_error")
    assert ev.grade == Grade.FAIL and "nvy" in err.message and "fix 1 all nvy" in err.message


def test_truncated_run_fails_completion():
    text = (CORPUS / "melt-melt" / "log.reference").read_text()
    ev = evaluate(parse_log(text[: text.index("       150   1.6444751")]))
    assert ev.grade == Grade.FAIL and "completion" in rules(ev, Severity.ERROR)
    assert "killed" in finding(ev, "completion").message


def test_exploding_box_and_neighbor_problems():
    rows = "0 1.0 -5.0 1000 0\n100 1.0 -5.0 1010 0\n200 1.0 -5.0 4000 0\n"
    text = (
        "Per MPI rank memory allocation (min/avg/max) = 3 | 3 | 3 Mbytes\nStep Temp TotEng Volume Press\n"
        + rows
        + "Loop time of 1 on 1 procs for 200 steps with 500 atoms\n\nTotal # of neighbors = 0\n"
        "Ave neighs/atom = 0\nNeighbor list builds = 10\nDangerous builds = 3\nTotal wall time: 0:00:01\n"
    )
    ev = evaluate(parse_log(text))
    assert "volume_jump" in rules(ev, Severity.ERROR)
    assert {"no_neighbors", "dangerous_builds"} <= rules(ev, Severity.WARNING)


@pytest.mark.parametrize(
    ("message", "rule"),
    [
        ("ERROR on proc 0: Bond atoms 5 6 missing at step 100 (../ntopo_bond_all.cpp:59)", "bond_atoms_missing"),
        ("ERROR: Out of range atoms - cannot compute PPPM (src/KSPACE/pppm.cpp:1927)", "out_of_range_atoms"),
        ("ERROR: Non-numeric atom coords - simulation unstable (src/domain.cpp:544)", "non_numeric"),
    ],
)
def test_unstable_dynamics_errors_fail(message, rule):
    text = (
        "LAMMPS (29 Sep 2021)\nrun 1000\nPer MPI rank memory allocation (min/avg/max) = 3 | 3 | 3 Mbytes\n"
        "Step Temp TotEng\n0 300 -100\n50 310 -100\n" + message + "\n"
    )
    ev = evaluate(parse_log(text))
    assert ev.grade == Grade.FAIL and rule in rules(ev, Severity.ERROR)
    assert "last input line: run 1000" in finding(ev, "lammps_error").message


def test_pressure_target_in_units_of_its_noise():
    def press_log(mean: float) -> str:
        rows = "".join(f"{s} 300 -100 {mean + (1 if s % 200 else -1)}\n" for s in range(0, 1100, 100))
        return (
            "Per MPI rank memory allocation (min/avg/max) = 3 | 3 | 3 Mbytes\nStep Temp TotEng Press\n"
            + rows
            + "Loop time of 1 on 1 procs for 1000 steps with 500 atoms\nTotal wall time: 0:00:01\n"
        )

    npt = ParsedScript(
        main="in.x",
        commands=[
            Command(
                line=1,
                file="in.x",
                text="fix 1 all npt temp 300 300 100 iso 1 1 1000",
                words="fix 1 all npt temp 300 300 100 iso 1.0 1.0 1000".split(),
            ),
            Command(line=2, file="in.x", text="run 1000", words=["run", "1000"]),
        ],
    )
    near = finding(evaluate(parse_log(press_log(2.5)), npt), "pressure_target")
    far = finding(evaluate(parse_log(press_log(50.0)), npt), "pressure_target")
    assert near.severity == Severity.INFO and far.severity == Severity.WARNING and far.threshold == 1.0


def test_minimization_is_not_judged_as_dynamics(tmp_path):
    script = (
        "units lj\natom_style atomic\nregion box block 0 6 0 6 0 6\ncreate_box 1 box\n"
        "create_atoms 1 random 180 4321 NULL overlap 0.8\nmass 1 1.0\npair_style lj/cut 2.5\n"
        "pair_coeff 1 1 1.0 1.0 2.5\nthermo 5\nminimize 0.0 0.0 60 1000\n"
    )
    log_path, _ = run(tmp_path, script)
    log = read_log(log_path)
    ev = evaluate(log)
    # the energy still falls at the end, but a minimizer that stops at maxiter is the only finding
    assert ev.grade == Grade.WARN and rules(ev) == {"minimize_not_converged"}
    log.blocks[0].minimization, log.blocks[0].command, log.commands = False, None, []
    assert "equilibration" in rules(evaluate(log), Severity.WARNING)  # what MD rules would have said


def test_unmatched_runs_skip_target_checks_with_an_info(tmp_path):
    log, script = run(tmp_path, LJ.format(T=1.5) + "fix 1 all nvt temp 1.5 1.5 0.5\nthermo 100\nrun 1000\n")
    screen = parse_log(
        "\n".join(
            line for line in log.read_text().splitlines() if not line.startswith(("fix", "run", "thermo", "velocity"))
        )
    )
    two_runs = parse_script(script)
    two_runs.commands.append(two_runs.commands[-1])
    two_runs.commands.insert(0, Command(line=1, file="in.test", text="jump SELF", words=["jump", "SELF"]))
    ev = evaluate(screen, two_runs)  # a loop and 2 runs for 1 block, no echo to fall back on
    assert "run_mapping" in rules(ev, Severity.INFO) and "temperature_target" not in rules(ev)


def test_thresholds_are_configurable(tmp_path):
    log, script = run(tmp_path, LJ.format(T=1.5) + "fix 1 all nvt temp 1.5 1.5 0.5\nthermo 100\nrun 1000\n")
    strict = EvaluationThresholds(temp_target_rel=0.0, temp_target_sigma=0.0)
    assert (
        finding(evaluate(read_log(log), parse_script(script), thresholds=strict), "temperature_target").severity
        == Severity.WARNING
    )


@pytest.mark.parametrize("example", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_no_corpus_reference_run_fails(example):
    log = read_log(CORPUS / example["name"] / example["reference_log"])
    for script in (None, parse_script(CORPUS / example["name"] / example["input"])):
        ev = evaluate(log, script)
        assert ev.grade != Grade.FAIL, [f for f in ev.findings if f.severity == Severity.ERROR]
        assert 0.5 <= ev.reward <= 1.0


def test_observables_are_what_the_production_run_measured(tmp_path):
    script = (
        LJ.format(T=1.0) + "minimize 1e-4 1e-6 100 1000\nfix 1 all nvt temp 1.5 1.5 0.5\n"
        "thermo_style custom step temp press pe ke etotal vol density lx\nthermo 100\nrun 500\nrun 2000\n"
    )
    log, _ = run(tmp_path, script)
    parsed = read_log(log)
    obs = evaluate(parsed).observables
    production = parsed.blocks[-1]
    assert obs["temp_final"] == production.column("Temp")[-1]
    temps = production.column("Temp")[1:]
    assert obs["temp_mean"] == pytest.approx(sum(temps) / len(temps))
    assert abs(obs["temp_mean"] - 1.5) < 0.15 and obs["temp_std"] > 0
    assert obs["vol_final"] == production.column("Volume")[-1] and obs["lx_final"] > 0
    assert obs["toteng_final"] == pytest.approx(obs["pe_final"] + obs["ke_final"], abs=1e-4)
    assert {"press_mean", "density_mean", "temp_mean_all"} <= set(obs)
    assert obs["atoms"] == 500 and obs["production_steps"] == 2000
    minimized = parsed.blocks[0]  # thermo_style one there: E_pair + E_mol
    assert obs["min_pe_final"] == pytest.approx(minimized.column("E_pair")[-1] + minimized.column("E_mol")[-1])
    # thermo_style one: the potential energy is E_pair + E_mol
    one = parse_log(
        "Per MPI rank memory allocation (min/avg/max) = 3 | 3 | 3 Mbytes\n"
        "Step Temp E_pair E_mol TotEng Press\n0 1.0 -5.0 -1.0 -4.5 0.1\n10 1.1 -4.0 -1.0 -3.5 0.2\n"
        "Loop time of 1 on 1 procs for 10 steps with 10 atoms\n"
    )
    assert evaluate(one).observables["pe_final"] == -5.0


def test_atoms_lost_silently_fail_and_atoms_removed_on_purpose_do_not(tmp_path):
    hot = LJ.format(T=50.0) + "fix 1 all nve\ntimestep 1.0\nthermo 10\n"
    log, script = run(tmp_path / "ignore", hot + "thermo_modify lost ignore\nrun 100\n")
    parsed = read_log(log)
    assert parsed.completed and parsed.blocks[0].atoms_start == 500 and parsed.blocks[0].atoms < 500
    ev = evaluate(parsed, parse_script(script))
    assert ev.grade == Grade.FAIL and "atoms_not_conserved" in rules(ev, Severity.ERROR)
    assert "lost ignore" in finding(ev, "atoms_not_conserved").hint
    # delete_atoms between runs and fix evaporate during one remove atoms on purpose
    calm = LJ.format(T=1.0) + "fix 1 all nve\nthermo 50\nrun 100\n"
    log, script = run(
        tmp_path / "delete", calm + "region corner block 0 1 0 1 0 1\ndelete_atoms region corner\nrun 100\n"
    )
    parsed = read_log(log)
    assert parsed.blocks[1].atoms_start == parsed.blocks[1].atoms < 500
    assert "atoms_not_conserved" not in rules(evaluate(parsed, parse_script(script)))
    log, script = run(
        tmp_path / "evaporate",
        calm + "region top block INF INF INF INF 4 5\nfix 2 all evaporate 10 5 top 38974\nrun 200\n",
    )
    parsed = read_log(log)
    assert parsed.blocks[1].atoms < parsed.blocks[1].atoms_start
    assert "atoms_not_conserved" not in rules(evaluate(parsed), Severity.ERROR)  # from the echo alone


def test_absurd_parameters_are_findings_of_the_evaluation():
    log = parse_log(
        "LAMMPS (22 Jul 2025)\nunits metal\ntimestep 10.0\nfix 1 all nvt temp -300 300 0.1\n"
        "fix 2 all nve\nrun 10\nPer MPI rank memory allocation (min/avg/max) = 3 | 3 | 3 Mbytes\n"
        "Step Temp TotEng\n0 300 -5.0\n10 301 -5.0\n"
        "Loop time of 1 on 1 procs for 10 steps with 500 atoms\nTotal wall time: 0:00:01\n"
    )
    ev = evaluate(log)
    messages = [f.message for f in ev.findings if f.rule == "implausible_parameter"]
    assert ev.grade == Grade.FAIL and len(messages) == 3
    assert "timestep 10 ps" in messages[0] and "cannot be negative" in messages[1]
    assert "Tdamp 0.1 is shorter than the timestep 10" in messages[2]
