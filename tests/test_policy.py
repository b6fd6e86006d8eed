import os
from pathlib import Path

import pytest
from conftest import CORPUS

from mdagent_hpc.lammps.parser import parse_script, parse_text
from mdagent_hpc.lammps.policy import check_policy
from mdagent_hpc.models import Limits

SETUP = "units lj\nlattice fcc 0.8442\nregion box block 0 5 0 5 0 5\ncreate_box 1 box\ncreate_atoms 1 box\n"


def codes(text: str, limits: Limits | None = None, run_dir: Path | None = None) -> list[tuple[str, int]]:
    return [(d.code, d.line) for d in check_policy(parse_text(text, run_dir=run_dir), limits, run_dir)]


@pytest.mark.parametrize(
    "line, code",
    [
        ('python hello here "print(1)"', "policy.python"),
        ("plugin load evil.so", "policy.plugin"),
        ("geturl https://example.org/x.eam", "policy.geturl"),
        ("shell touch x", "policy.shell"),
        ("shell cd ..", "policy.shell"),
        ("shell putenv A=1", "policy.shell"),
        ("fix 1 all python/invoke 10 post_force f", "policy.fix_style"),
        ("fix 2 all ipi host 3141", "policy.fix_style"),
        ("pair_style python 2.5", "policy.pair_python"),
        ("variable k getenv HOME", "policy.variable_getenv"),
        ("variable p python f", "policy.variable_python"),
        ("dump 1 all movie 10 movie.mpg type type", "policy.dump_movie"),
        ("read_data /etc/passwd", "policy.path"),
        ("read_data ../secret.data", "policy.path"),
        ("include ~/.bashrc", "policy.path"),
        ("write_data sub/../../x", "policy.path"),
        ("dump 1 all atom 10 /tmp/x.dump", "policy.path"),
        ("log /root/log.txt", "policy.path"),
        ("print hello file /tmp/p", "policy.path"),
        ('fix 3 all print 10 "x" append ../p.txt', "policy.path"),
        ("fix 4 all ave/time 1 1 1 c_thermo_temp file /tmp/t.txt", "policy.path"),
        ("pair_coeff * * /opt/pots/Cu.eam.alloy Cu", "policy.path"),
        ("molecule m ../w.mol", "policy.path"),
        ("read_data 'data;touch x'", "policy.path"),
        ("shell rm /etc/hosts", "policy.path"),
        ("shell mv a ../b", "policy.path"),
        ("restart 100 /tmp/a.rst /tmp/b.rst", "policy.path"),
        ("info system out append /tmp/info.txt", "policy.path"),
        ("fix 5 all tmd 1.0 target.xyz 100 /tmp/tmd.out", "policy.path"),
    ],
)
def test_each_refusal_has_its_code_and_line(line, code):
    found = codes(SETUP + line + "\n")
    assert (code, 6) in found, found


@pytest.mark.parametrize(
    "line",
    [
        "shell rm restart.equil",
        "shell mkdir out",
        "shell mv a.txt out/a.txt",
        "shell rmdir out",
        "dump 1 all atom 10 dump.*.gz",
        "read_data data.lmp",
        'print "see /etc/passwd"',
        "variable x equal v_a/2",
        'fix 1 all print 10 "/not/a/path" file p.txt',
    ],
)
def test_allowed_commands(line):
    assert codes(SETUP + line + "\n") == []


def test_refusal_hidden_behind_a_variable_is_found():
    assert ("policy.shell", 7) in codes(SETUP + "variable c string shell\n${c} touch x\n")


def test_path_hidden_in_an_index_variable_is_found():
    text = SETUP + "variable f index ok.data /etc/passwd\nread_data ${f}\nnext f\n"
    assert ("policy.path", 7) in codes(text)


def test_refusal_inside_if_and_run_every():
    text = SETUP + 'if "1 > 0" then "shell echo pwned"\nrun 10 every 5 "python f invoke"\n'
    found = codes(text)
    assert ("policy.shell", 6) in found and ("policy.python", 7) in found


def test_command_name_from_file_variable(tmp_path):
    (tmp_path / "names.txt").write_text("shell\n")
    (tmp_path / "in.x").write_text(SETUP + "variable c file names.txt\n${c} id\n")
    diags = check_policy(parse_script(tmp_path / "in.x"), None, tmp_path)
    assert any(d.code == "policy.shell" and d.line == 7 for d in diags)


def test_unknowable_command_name_is_refused():
    assert ("policy.unresolved_command", 7) in codes(SETUP + "variable c getenv CMD\n${c} x\n")


def test_symlink_out_of_run_folder_is_refused(tmp_path):
    os.symlink("/etc/hostname", tmp_path / "data.lmp")
    assert ("policy.path", 6) in codes(SETUP + "read_data data.lmp\n", run_dir=tmp_path)


def test_limits_steps_atoms_walltime():
    limits = Limits(max_steps=1000, max_atoms=100, max_walltime_s=60)
    found = codes(SETUP + "run 5000\ntimer timeout 00:10:00\n", limits)
    assert ("limit.steps", 6) in found
    assert ("limit.atoms", 5) in found  # 4 * 5^3 = 500 atoms
    assert ("limit.walltime", 7) in found


def test_loop_multiplies_steps():
    text = SETUP + "variable i loop 20\nlabel l\nrun 100\nnext i\njump SELF l\n"
    assert ("limit.steps", 8) in codes(text, Limits(max_steps=1000))
    assert codes(text, Limits(max_steps=3000)) == []


def test_corpus_passes_policy():
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        script = next(folder.glob("in.*"))
        assert check_policy(parse_script(script), None, folder) == [], folder.name


@pytest.mark.parametrize(
    "lines",
    [
        # a script that writes commands to a file and reads them back: a `shell` nobody checked (review finding)
        ["print \"shell sh -c 'id > pwned.txt'\" file evil.in", "include evil.in"],
        ['fix p all print 1 "shell curl http://example.org" file e3.in', "run 1", 'if "1 > 0" then "include e3.in"'],
        ['print "shell touch x" append ./evil.in', "jump evil.in"],
        ["log made.in", 'print "shell id"', "log none", "include made.in"],
        ["variable f string evil", 'print "shell id" file ${f}.in', "include ${f}.in"],
    ],
)
def test_a_file_the_script_writes_cannot_be_read_as_commands(lines, tmp_path):
    text = SETUP + "\n".join(lines) + "\n"
    found = {code for code, _ in codes(text, run_dir=tmp_path)} | {code for code, _ in codes(text)}
    assert "policy.include_unchecked" in found, found


def test_a_file_given_with_the_script_may_be_included(tmp_path):
    (tmp_path / "settings.in").write_text("pair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5\n")
    found = codes(SETUP + "mass 1 1.0\ninclude settings.in\nrun 10\n", run_dir=tmp_path)
    assert not [code for code, _ in found if code.startswith("policy.")], found
