import math
import re
import subprocess
from pathlib import Path

import pytest
from conftest import CORPUS, MANIFEST

from mdagent_hpc.lammps.install import find_lammps
from mdagent_hpc.lammps.log import LogError, parse_log, read_log

LJ_BOX = """units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
"""


def run_lammps(folder: Path, script: str, name: str = "in.test") -> tuple[Path, str, int]:
    """Run `script` with the real LAMMPS in `folder`; return (log path, screen output, exit status)."""
    lmp = find_lammps()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(script)
    proc = subprocess.run(
        lmp.command("-in", name, "-log", "log.lammps", "-nocite"),
        cwd=folder,
        env=lmp.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return folder / "log.lammps", proc.stdout, proc.returncode


@pytest.mark.parametrize("example", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_every_corpus_reference_log_parses(example):
    text = (CORPUS / example["name"] / example["reference_log"]).read_text()
    log = parse_log(text)
    assert log.completed and not log.errors
    assert log.version == example["reference_log_lammps_version"]
    assert log.blocks[0].columns == example["thermo_columns"]
    # every run is one block with its Loop time line
    assert len(log.blocks) == text.count("\nLoop time of ")
    assert all(b.finished and b.rows for b in log.blocks)
    assert all(len(row) == len(b.columns) for b in log.blocks for row in b.rows)
    reference_blocks = example["thermo_blocks"]
    if example["name"] == "MC-mc":
        # the manifest only counted blocks after a memory line; its 3000 `run 1 pre no post no` print none
        assert (reference_blocks, len(log.blocks)) == (3, 3003)
    else:
        assert len(log.blocks) == reference_blocks


def test_old_single_spaced_log_with_minimization():
    log = read_log(Path(__file__).parent / "data" / "log.27Nov18.min.g++.1")  # LAMMPS's reference log of 2018
    md, mini = log.blocks
    assert md.style == "one" and not md.minimization and md.command.split() == ["run", "1000"]
    assert md.column("Step")[-1] == 1000 and md.steps == 1000 and md.atoms == 800
    assert mini.minimization and mini.min_stop == "energy tolerance"
    assert mini.column("TotEng")[-1] == pytest.approx(0.4045781)
    assert mini.neighbors.neighs_per_atom == pytest.approx(8.69625) and mini.neighbors.dangerous_builds == 0
    assert mini.timing["Pair"].avg_seconds == pytest.approx(0.18404)
    assert log.total_wall_time == 0


def test_multi_style_with_shake_stats_between_records():
    log = read_log(CORPUS / "peptide-peptide" / "log.reference")
    (block,) = log.blocks
    assert block.style == "multi"
    assert block.column("Step") == [0, 50, 100, 150, 200, 250, 300]
    assert block.column("Temp")[0] == pytest.approx(282.1005)
    assert block.column("Press")[1] == pytest.approx(-1331.7946)
    assert block.performance.ns_per_day is not None and block.performance.hours_per_ns is not None


def test_warnings_inside_a_block_do_not_split_it():
    log = read_log(CORPUS / "granregion-granregion.box" / "log.reference")
    inside = [(line, text) for line, text in log.warnings if log.blocks[0].line < line]
    assert any("Fewer insertions" in text for _, text in inside)
    assert len(log.blocks) == 5 and all(len(b.rows) == 51 for b in log.blocks)


def test_fresh_log_new_header_layout_and_statistics(tmp_path):
    log_path, screen, status = run_lammps(
        tmp_path, LJ_BOX + "velocity all create 1.5 1234\nfix 1 all nve\nthermo 20\nrun 100\n"
    )
    assert status == 0
    log = read_log(log_path)
    assert log.version.startswith("22 Jul 2025") and log.completed and log.units == "lj"
    (block,) = log.blocks
    assert block.columns == ["Step", "Temp", "E_pair", "E_mol", "TotEng", "Press"] and block.style == "one"
    assert block.column("Step") == [0, 20, 40, 60, 80, 100]
    assert block.column("Temp")[0] == 1.5
    assert (block.steps, block.atoms, block.procs, log.atoms) == (100, 256, 1, 256)
    assert block.performance.tau_per_day > 0 and block.performance.atom_steps_per_s > 1000
    assert block.neighbors.builds is not None and block.neighbors.neighs_per_atom > 10
    assert block.command == "run 100"
    assert "velocity all create 1.5 1234" in [text for _, text in log.commands]
    # the screen has no input echo but tells the unit style and timestep of each run
    screen_log = parse_log(screen)
    assert screen_log.commands == [] and screen_log.blocks[0].command is None
    assert (screen_log.blocks[0].units, screen_log.blocks[0].timestep) == ("lj", 0.005)
    assert screen_log.blocks[0].rows == block.rows


def test_several_runs_with_changing_styles(tmp_path):
    script = LJ_BOX + (
        "velocity all create 1.0 1\nfix 1 all nve\nthermo 25\nthermo_style multi\nrun 50\n"
        "thermo_style yaml\nrun 50\nthermo_style custom step temp pe etotal vol density\nrun 50\n"
    )
    log_path, _, status = run_lammps(tmp_path, script)
    assert status == 0
    multi, yaml, custom = read_log(log_path).blocks
    assert multi.style == "multi" and multi.columns[:4] == ["Step", "TotEng", "KinEng", "Temp"]
    assert multi.column("Step") == [0, 25, 50]
    assert yaml.style == "yaml" and yaml.columns[:2] == ["Step", "Temp"] and yaml.column("Step") == [50, 75, 100]
    assert custom.style == "custom" and custom.columns == ["Step", "Temp", "PotEng", "TotEng", "Volume", "Density"]
    assert custom.column("Density") == [pytest.approx(0.8442)] * 3
    # the same state printed by three styles
    assert multi.column("Temp")[-1] == pytest.approx(yaml.column("Temp")[0], rel=1e-4)
    assert yaml.column("Temp")[-1] == pytest.approx(custom.column("Temp")[0], rel=1e-6)


def test_echoed_commands_indented_substituted_and_from_if(tmp_path):
    script = LJ_BOX + (
        "velocity all create 1.5 1\n   fix 1 all nve\n\tthermo 10\n  run 20\n"
        'variable n equal 30\nrun ${n}\nif "1 > 0" then "run 10"\n'
    )
    log_path, _, status = run_lammps(tmp_path, script)
    log = read_log(log_path)
    assert status == 0 and [b.command for b in log.blocks] == ["run 20", "run 30", "run 10"]
    texts = [text for _, text in log.commands]
    assert "fix 1 all nve" in texts and "run ${n}" in texts
    assert not any("CPU" in text for text in texts)  # "  create_atoms CPU = ..." is output, not input


def test_error_with_source_and_last_input_line(tmp_path):
    log_path, _, status = run_lammps(tmp_path, LJ_BOX + "foobar 1 2\nrun 10\n")
    assert status != 0
    log = read_log(log_path)
    assert not log.completed and log.blocks == []
    (err,) = log.errors
    assert err.message == "Unknown command: foobar 1 2"
    assert re.fullmatch(r"src/\S*input\.cpp:\d+", err.source)
    assert err.last_input == "foobar 1 2" and err.proc is None


def test_error_with_docs_link_and_caret_line(tmp_path):
    log_path, _, _ = run_lammps(tmp_path, LJ_BOX + "read_data nothing.data\n")
    (err,) = read_log(log_path).errors
    assert err.message.startswith("Cannot use read_data without add keyword")
    assert err.url.startswith("https://docs.lammps.org/err") and err.source.startswith("src/")
    assert err.last_input == "read_data nothing.data"
    log_path, _, _ = run_lammps(tmp_path / "b", "units lj\nread_data nothing.data\n")
    (err,) = read_log(log_path).errors
    assert err.message.startswith("Cannot open file nothing.data") and err.last_input == "read_data nothing.data"


def test_error_on_proc_without_last_line_takes_last_echoed_command(tmp_path):
    log_path, _, status = run_lammps(tmp_path, "units lj\ninclude missing.in\n")
    assert status != 0
    (err,) = read_log(log_path).errors
    assert err.proc == 0 and err.message.startswith("Cannot open input script missing.in")
    assert err.last_input == "include missing.in"


def test_old_error_form_last_command():
    text = (
        "LAMMPS (29 Sep 2021 - Update 2)\nunits lj\nfoobar 1 2\n"
        "ERROR: Unknown command: foobar 1 2 (../input.cpp:232)\nLast command: foobar 1 2\n"
    )
    (err,) = parse_log(text).errors
    assert (err.message, err.source, err.last_input) == (
        "Unknown command: foobar 1 2",
        "../input.cpp:232",
        "foobar 1 2",
    )


def test_lost_atoms_error_ends_the_block_and_warning_form_keeps_it(tmp_path):
    hot = LJ_BOX + "velocity all create 50.0 1234\nfix 1 all nve\ntimestep 1.0\nthermo 10\n"
    log_path, _, status = run_lammps(tmp_path / "error", hot + "run 100\n")
    log = read_log(log_path)
    assert status != 0 and not log.completed
    assert log.errors[0].message.startswith("Lost atoms") and log.errors[0].last_input == "run 100"
    assert not log.blocks[0].finished and len(log.blocks[0].rows) == 1 and log.blocks[0].timestep == 1.0
    log_path, _, status = run_lammps(tmp_path / "warn", hot + "thermo_modify lost warn\nrun 100\n")
    log = read_log(log_path)
    assert status == 0 and log.completed and not log.errors
    assert any(text.startswith("Lost atoms") for _, text in log.warnings)
    (block,) = log.blocks
    assert block.column("Step") == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert block.neighbors.dangerous_builds > 0


def test_nan_and_inf_are_kept(tmp_path):
    script = (
        "units lj\natom_style atomic\nregion box block 0 5 0 5 0 5\ncreate_box 1 box\n"
        "create_atoms 1 single 1 1 1\ncreate_atoms 1 single 1 1 1\nmass 1 1.0\n"
        "pair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5\nfix 1 all nve\nthermo 1\nrun 2\n"
    )
    log_path, _, _ = run_lammps(tmp_path, script)
    block = read_log(log_path).blocks[0]
    assert block.column("E_pair")[0] == math.inf
    assert all(math.isnan(v) for v in block.column("TotEng")[1:])


def test_truncated_log_has_an_unfinished_last_block(tmp_path):
    text = (CORPUS / "melt-melt" / "log.reference").read_text()
    cut = text[: text.index("       150   1.6444751")]
    log = parse_log(cut)
    assert not log.completed and log.total_wall_time is None and not log.errors
    assert not log.blocks[0].finished and log.blocks[0].column("Step") == [0, 50, 100]
    assert log.atoms == 4000  # from "Created 4000 atoms"


def test_read_log_refuses_what_is_not_a_log(tmp_path):
    with pytest.raises(LogError, match="is a folder"):
        read_log(tmp_path)
    (tmp_path / "empty").write_text("")
    with pytest.raises(LogError, match="empty"):
        read_log(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("shopping list\nmilk\neggs and flour\n")
    with pytest.raises(LogError, match="not a LAMMPS log"):
        read_log(tmp_path / "notes.txt")
    # a real LAMMPS log cut off right after its start is still a log: a run that did not finish
    (tmp_path / "cut").write_text("LAMMPS (22 Jul 2025 - Update 4)\nunits lj\natom_style atomic\n")
    log = read_log(tmp_path / "cut")
    assert log.version.startswith("22 Jul 2025") and not log.completed
    # a second log file opened by `log other.log` starts with commands, not with the version line
    (tmp_path / "second").write_text(
        "run 10\nStep Temp\n0 1.0\n10 1.1\nLoop time of 0.01 on 1 procs for 10 steps with 10 atoms\n"
    )
    assert read_log(tmp_path / "second").blocks[0].finished


def test_read_log_refuses_missing_binary_and_huge_files(tmp_path):
    with pytest.raises(LogError, match="no such log file"):
        read_log(tmp_path / "log.lammps")
    (tmp_path / "bin").write_bytes(b"LAMMPS\0\x01\x02" * 100)
    with pytest.raises(LogError, match="binary"):
        read_log(tmp_path / "bin")
    (tmp_path / "big").write_text("x" * 1000)
    with pytest.raises(LogError, match="MB"):
        read_log(tmp_path / "big", max_bytes=100)
    (tmp_path / "latin").write_bytes(b"LAMMPS (8 Apr 2021)\n# caf\xe9\nTotal wall time: 0:01:02\n")
    log = read_log(tmp_path / "latin")
    assert log.completed and log.total_wall_time == 62
