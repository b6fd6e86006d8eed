import json
import subprocess
from pathlib import Path

import pytest
from conftest import CORPUS, copy_example

from mdagent_hpc.lammps.install import find_lammps
from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.preflight import dry_run, preflight
from mdagent_hpc.models import Limits

SETUP = (
    "units lj\natom_style atomic\nlattice fcc 0.8442\nregion box block 0 4 0 4 0 4\ncreate_box 1 box\n"
    "create_atoms 1 box\nmass 1 1.0\n"
)  # 7 lines


def write(tmp_path: Path, text: str, name: str = "in.test") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors(report):
    return [(d.code, d.line) for d in report.diagnostics if d.severity == "error"]


@pytest.mark.parametrize("folder", sorted(p.name for p in CORPUS.iterdir() if p.is_dir()))
def test_corpus_passes_preflight(tmp_path, folder):
    run_dir = copy_example(CORPUS / folder, tmp_path / folder)
    report = preflight(next(run_dir.glob("in.*")), run_dir)
    assert report.ok, [d.render() for d in report.diagnostics]
    assert report.skiprun_seconds is not None


def test_unknown_command_error_form_with_source_location(tmp_path):
    report = preflight(write(tmp_path, SETUP + "pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nfoo_bar 1 2\n"))
    (diag,) = report.diagnostics
    assert (diag.code, diag.line) == ("lammps.error", 10)
    assert "Unknown command" in diag.message and "spelling" in diag.hint


def test_for_more_information_error_form_maps_to_line(tmp_path):
    report = preflight(write(tmp_path, SETUP + "pair_style lj/cut 2.5\n\npair_coeff 1 1 1.0 1.0 2.5 extra words\n"))
    (diag,) = report.diagnostics
    assert (diag.code, diag.line) == ("lammps.error", 10)
    assert diag.message == "Incorrect args for pair coefficients"
    assert "pair_coeff" in diag.hint


def test_error_on_proc_form_maps_to_last_echoed_command(tmp_path):
    # The potential check would stop this earlier, so call the dry run directly.
    path = write(tmp_path, SETUP + "pair_style eam\npair_coeff 1 1 nowhere.eam\nrun 10\n")
    script = parse_text(path.read_text(), "in.test", tmp_path)
    diags, seconds, log = dry_run(script, tmp_path, find_lammps(), Limits(), {})
    assert "ERROR on proc 0" in log
    (diag,) = diags
    assert diag.line == 9 and "nowhere.eam" in diag.message and "nowhere.eam" in diag.hint


def test_error_in_variable_substituted_command_maps_back(tmp_path):
    text = SETUP + "variable style string lj/cutt\npair_style ${style} 2.5\n"
    (diag,) = preflight(write(tmp_path, text)).diagnostics
    assert diag.line == 9 and "lj/cutt" in diag.message


def test_missing_pair_coefficients_found_statically(tmp_path):
    text = (
        SETUP.replace("create_box 1", "create_box 2") + "mass 2 1.0\npair_style lj/cut 2.5\n"
        "pair_coeff 1 1 1.0 1.0\nrun 10\n"
    )
    report = preflight(write(tmp_path, text))
    assert errors(report) == [("static.pair_coeff_missing", 11)]
    assert "[2]" in report.diagnostics[0].message


def test_table_style_needs_every_pair(tmp_path):
    text = (
        SETUP.replace("create_box 1", "create_box 2") + "pair_style table linear 100\n"
        "pair_coeff 1 1 t.table A\npair_coeff 2 2 t.table A\nrun 10\n"
    )
    (tmp_path / "t.table").write_text("A\nN 2\n\n1 1.0 1.0 1.0\n2 2.0 0.5 0.5\n")
    report = preflight(write(tmp_path, text), dry=False)
    assert ("static.pair_coeff_missing", 11) in errors(report)


def test_undefined_thermo_reference(tmp_path):
    text = SETUP + "pair_style lj/cut 2.5\npair_coeff * * 1 1\nthermo_style custom step v_ghost c_nope\nrun 10\n"
    report = preflight(write(tmp_path, text))
    assert [c for c, _ in errors(report)] == ["static.undefined_reference"] * 2


def test_policy_failure_never_reaches_dry_run(tmp_path):
    marker = tmp_path / "pwned"
    report = preflight(write(tmp_path, SETUP + f"shell touch {marker}\n"))
    assert errors(report) == [("policy.shell", 8), ("policy.path", 8)]
    assert report.skiprun_seconds is None and not marker.exists()


def test_dry_run_works_on_a_scratch_copy(tmp_path):
    text = SETUP + "pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nwrite_data out.data\nprint hi file note.txt\n"
    report = preflight(write(tmp_path, text))
    assert report.ok
    assert not (tmp_path / "out.data").exists() and not (tmp_path / "note.txt").exists()


def test_timeout_is_a_failure(tmp_path):
    text = SETUP + "variable i loop 100000000\nlabel top\nnext i\njump SELF top\n"
    report = preflight(write(tmp_path, text), limits=Limits(skiprun_timeout_s=1, max_steps=10**12))
    assert not report.ok
    assert [d.code for d in report.diagnostics] == ["preflight.timeout"]


def test_skiprun_artifact_is_a_warning(tmp_path):
    text = SETUP + 'pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nrun 10\nprint "T $(temp)"\n'
    report = preflight(write(tmp_path, text))
    assert report.ok
    assert [(d.code, d.line) for d in report.diagnostics] == [("preflight.skiprun_limit", 11)]


def test_atoms_over_limit(tmp_path):
    report = preflight(write(tmp_path, SETUP), limits=Limits(max_atoms=100))
    assert ("limit.atoms", 6) in errors(report)


def test_cli_check_json_and_exit_codes(tmp_path):
    good = write(tmp_path, SETUP + "pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nrun 10\n", "in.good")
    bad = write(tmp_path, SETUP + 'python x here "1"\n', "in.bad")
    ok = subprocess.run(["mdagent", "check", str(good), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    fail = subprocess.run(["mdagent", "check", str(bad), "--json"], capture_output=True, text=True)
    data = json.loads(fail.stdout)
    assert fail.returncode == 1 and data["diagnostics"][0]["code"] == "policy.python"
    assert data["diagnostics"][0]["line"] == 8


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.in", "no such script"),
        (lambda p: (p / "bin.in").write_bytes(b"\x7fELF\x00\x00") and p / "bin.in", "binary file"),
        (lambda p: p, "is a folder"),
    ],
)
def test_cli_check_bad_input_is_one_sentence(tmp_path, make, message):
    result = subprocess.run(["mdagent", "check", str(make(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stdout + result.stderr


# --- issue 9: blind spots ------------------------------------------------------------------------------

PAIR = "pair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5\n"  # lines 8-9 after SETUP


@pytest.mark.parametrize("redirect", ["log other.log", "log none", "echo none", "log other.log append\necho screen"])
def test_a_script_that_moves_its_log_does_not_blind_the_dry_run(tmp_path, redirect):
    text = redirect + "\n" + SETUP + PAIR + "foo_bar 1 2\n"
    first = 1 + redirect.count("\n")
    report = preflight(write(tmp_path, text))
    (diag,) = report.diagnostics
    assert (diag.code, diag.line) == ("lammps.error", first + 10) and "Unknown command" in diag.message
    # the atom limit is checked from what the dry run printed, at the command that created the atoms
    # (a cylinder: the static estimate does not know its atoms, only the dry run does)
    cylinder = SETUP.replace("create_atoms 1 box", "region cyl cylinder z 2 2 1.9 0 4\ncreate_atoms 1 region cyl")
    report = preflight(write(tmp_path, redirect + "\n" + cylinder + PAIR), limits=Limits(max_atoms=100))
    assert errors(report) == [("limit.atoms", first + 7)]


def test_run_zero_then_a_compute_value_is_no_refusal_and_the_rest_is_still_dry_run(tmp_path):
    idiom = (
        SETUP + PAIR + "compute pe all pe\nrun 0\nvariable E equal c_pe\nvariable E0 equal $E\n"
        'print "E0 = ${E0}"\nvariable P equal press\nprint "P = $P"\n'
    )
    report = preflight(write(tmp_path, idiom + "fix 1 all nve\nrun 100\n"))
    assert report.ok, [d.render() for d in report.diagnostics]
    # a real mistake after the idiom is still found, at its line
    report = preflight(write(tmp_path, idiom + "fix 1 all nvee\nrun 100\n"))
    assert errors(report) == [("lammps.error", 17)] and "nvee" in report.diagnostics[-1].message


def test_a_missing_package_is_the_root_cause_at_the_style_line(tmp_path):
    text = (
        SETUP.replace("lj", "metal").replace("0.8442", "3.615") + "pair_style pace\npair_coeff * * Cu_v9.yace Cu\n"
        "run 10\n"
    )
    report = preflight(write(tmp_path, text))
    (diag,) = [d for d in report.diagnostics if d.severity == "error"]
    assert (diag.code, diag.line) == ("lammps.error", 8)
    assert "ML-PACE" in diag.message and "ML-PACE package" in diag.hint


def test_static_findings_do_not_hide_an_earlier_dry_run_error(tmp_path):
    # line 8 is misspelled; the missing pair coefficient of type 2 (static, at the run) comes after it
    text = (
        SETUP.replace("create_box 1", "create_box 2") + "mass 2 1.0\nvelocityy all create 1.0 1\n" + PAIR + "run 10\n"
    )
    report = preflight(write(tmp_path, text))
    assert errors(report) == [("lammps.error", 9), ("static.pair_coeff_missing", 12)]


def test_every_missing_input_file_is_reported_at_once(tmp_path):
    text = (
        "units metal\natom_style full\nread_data system.data\ninclude settings.in\n"
        "molecule water water.mol\npair_style eam/alloy\npair_coeff * * CuNi_v9.eam.alloy Cu Ni\n"
        "fix 1 all nve\nwrite_restart state.restart\nread_restart state.restart\nread_restart other.restart\n"
    )
    report = preflight(write(tmp_path, text))
    assert errors(report) == [
        ("file.missing", 3),
        ("file.missing", 4),
        ("file.missing", 5),
        ("potential.missing", 7),
        ("file.missing", 11),
    ]
    assert "system.data" in report.diagnostics[0].message and "settings.in" in report.diagnostics[1].message


def test_an_unmatched_quote_is_an_error_at_its_line_even_without_the_dry_run(tmp_path):
    text = SETUP + PAIR + 'print "done\nrun 10\n'
    for dry in (False, True):
        report = preflight(write(tmp_path, text), dry=dry)
        assert errors(report)[0] == ("parse.unmatched_quote", 10)
    assert preflight(write(tmp_path, SETUP + PAIR + 'print "it is done" # don\'t\n'), dry=False).ok


def test_physically_absurd_settings_are_errors(tmp_path):
    metal = SETUP.replace("units lj", "units metal").replace("0.8442", "3.615") + PAIR
    cases = [
        ("timestep 10.0\n", "static.timestep"),
        ("fix 1 all nvt temp -300 300 0.1\n", "static.fix_parameter"),
        ("timestep 0.002\nfix 1 all nvt temp 300 300 0.001\n", "static.fix_parameter"),
        ("fix 1 all nve\nfix 2 all langevin 300 300 0.0001 4828\n", "static.fix_parameter"),
        ("fix 1 all nvt temp 300 300 0.1\nfix 2 all nve\n", "static.double_integration"),
    ]
    for settings, code in cases:
        report = preflight(write(tmp_path, metal + settings + "run 10\n"), dry=False)
        assert [c for c, _ in errors(report)] == [code], (settings, report.diagnostics)
        assert report.diagnostics[0].line == 10 + settings.count("\n") - 1
    sound = (
        "timestep 0.002\nfix 1 all nvt temp 300 300 0.1\nfix 2 all langevin 300 300 0.1 48 \nunfix 2\n"
        "run 10\nunfix 1\nfix 3 all nve\nrun 10\n"
    )
    assert preflight(write(tmp_path, metal + sound), dry=False).ok


def test_a_missing_mass_is_found_before_the_run(tmp_path):
    text = (
        SETUP.replace("create_box 1", "create_box 2").replace("mass 1 1.0", "mass 1 1.0")
        + "pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0\nrun 10\n"
    )
    report = preflight(write(tmp_path, text))
    assert errors(report) == [("static.mass_missing", 10)]


def test_an_error_in_one_of_several_identical_commands_points_at_the_one_that_ran(tmp_path):
    text = "velocity all create 1.0 1\n" + SETUP + PAIR + "velocity all create 1.0 1\nrun 0\n"
    report = preflight(write(tmp_path, text))
    assert errors(report) == [("lammps.error", 1)] and "box" in report.diagnostics[0].message


def test_dry_run_copies_what_the_script_reads_not_the_folder_below_it(tmp_path):
    """A script in a busy folder (/tmp, a home folder): only its files go to the dry run, subfolders it reads too."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.txt").write_text("1 2\n")
    junk = tmp_path / "other-project"
    junk.mkdir()
    (junk / "big.bin").write_bytes(b"\0" * 1024)
    script = write(
        tmp_path,
        SETUP + 'pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nvariable t file data/table.txt\nprint "${t}"\nrun 0\n',
    )
    report = preflight(script)
    assert report.ok, [d.render() for d in report.diagnostics]
    (tmp_path / "data" / "table.txt").unlink()
    missing = preflight(script)
    assert not missing.ok and "data/table.txt" in " ".join(d.message for d in missing.diagnostics)
