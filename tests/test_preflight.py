import json
import subprocess
from pathlib import Path

import pytest
from conftest import CORPUS, copy_example

from mdagent_hpc.lammps.install import find_lammps
from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.preflight import dry_run, preflight
from mdagent_hpc.models import Limits

SETUP = ("units lj\natom_style atomic\nlattice fcc 0.8442\nregion box block 0 4 0 4 0 4\ncreate_box 1 box\n"
         "create_atoms 1 box\nmass 1 1.0\n")  # 7 lines


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
    text = SETUP.replace("create_box 1", "create_box 2") + "mass 2 1.0\npair_style lj/cut 2.5\n" \
        "pair_coeff 1 1 1.0 1.0\nrun 10\n"
    report = preflight(write(tmp_path, text))
    assert errors(report) == [("static.pair_coeff_missing", 11)]
    assert "[2]" in report.diagnostics[0].message


def test_table_style_needs_every_pair(tmp_path):
    text = SETUP.replace("create_box 1", "create_box 2") + "pair_style table linear 100\n" \
        "pair_coeff 1 1 t.table A\npair_coeff 2 2 t.table A\nrun 10\n"
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
    text = SETUP + "pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nrun 10\nprint \"T $(temp)\"\n"
    report = preflight(write(tmp_path, text))
    assert report.ok
    assert [(d.code, d.line) for d in report.diagnostics] == [("preflight.skiprun_limit", 11)]


def test_atoms_over_limit(tmp_path):
    report = preflight(write(tmp_path, SETUP), limits=Limits(max_atoms=100))
    assert ("limit.atoms", 6) in errors(report)


def test_cli_check_json_and_exit_codes(tmp_path):
    good = write(tmp_path, SETUP + "pair_style lj/cut 2.5\npair_coeff 1 1 1 1\nrun 10\n", "in.good")
    bad = write(tmp_path, SETUP + "python x here \"1\"\n", "in.bad")
    ok = subprocess.run(["mdagent", "check", str(good), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    fail = subprocess.run(["mdagent", "check", str(bad), "--json"], capture_output=True, text=True)
    data = json.loads(fail.stdout)
    assert fail.returncode == 1 and data["diagnostics"][0]["code"] == "policy.python"
    assert data["diagnostics"][0]["line"] == 8


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.in", "no such file"),
    (lambda p: (p / "bin.in").write_bytes(b"\x7fELF\x00\x00") and p / "bin.in", "binary file"),
    (lambda p: p, "is a folder"),
])
def test_cli_check_bad_input_is_one_sentence(tmp_path, make, message):
    result = subprocess.run(["mdagent", "check", str(make(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stdout + result.stderr
