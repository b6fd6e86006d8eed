"""Static checks on scripts written here (no LAMMPS run): what `lmp -skiprun` cannot see."""

from pathlib import Path

from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.static import static_checks

SETUP = ("units lj\natom_style atomic\nlattice fcc 0.8442\nregion box block 0 4 0 4 0 4\ncreate_box 2 box\n"
         "create_atoms 1 box\nmass 1 1.0\nmass 2 1.0\npair_style lj/cut 2.5\npair_coeff * * 1.0 1.0\n")  # 10 lines


def found(text: str, run_dir: Path | None = None) -> list[tuple[str, int]]:
    return [(d.code, d.line) for d in static_checks(parse_text(text, "in.test", run_dir), run_dir)]


def test_the_sound_setup_has_no_findings(tmp_path):
    assert found(SETUP + "velocity all create 1.0 1\nfix 1 all nve\nrun 10\n", tmp_path) == []


def test_a_missing_mass_is_reported_where_it_is_first_needed():
    text = SETUP.replace("mass 2 1.0\n", "")  # 9 lines
    assert found(text + "velocity all create 1.0 1\nfix 1 all nve\nrun 10\n") == [("static.mass_missing", 10)]
    assert found(text + "fix 1 all nve\nrun 10\n") == [("static.mass_missing", 11)]
    # masses from a data file's Masses section, or from an EAM file, are masses
    eam = "pair_style eam/alloy\npair_coeff * * CuNi.eam.alloy Cu Ni"
    assert found(text.replace("pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0", eam) +
                 "run 10\n") == []


def test_lattice_value_in_the_wrong_unit_style_blames_the_units_line():
    assert found(SETUP.replace("units lj", "units metal") + "run 10\n") == [("static.units", 1)]
    assert found(SETUP.replace("0.8442", "3.615") + "run 10\n") == [("static.units", 1)]
    # a second, dense lattice in lj units (SRD solvent) is not judged
    assert found(SETUP + "lattice sq 85.0\nrun 10\n") == []


def test_references_in_formulas_computes_and_dumps_must_be_defined():
    text = SETUP + ("fix 3 all nvt temp 1 1 0.5\nvariable e equal pe+f_3/atoms+c_3_temp\n"
                    "variable bad equal f_33+v_nothing\ncompute r all reduce sum c_gone\n"
                    "dump d all custom 10 d.txt id v_e v_missing\nrun 10\n")
    assert found(text) == [("static.undefined_reference", 13), ("static.undefined_reference", 13),
                           ("static.undefined_reference", 14), ("static.undefined_reference", 15)]


def test_missing_files_written_earlier_by_the_script_are_not_missing(tmp_path):
    text = SETUP + "write_data saved.data\nwrite_restart r.*\nclear\nread_data saved.data\nread_restart r.100\n" \
        "read_data other.data\n"
    assert found(text, tmp_path) == [("file.missing", 16)]


def test_run_and_minimize_arguments_are_checked_before_the_run():
    text = SETUP + ("run 100.5\nrun 100 1.0\nrun 100 pre no post yes every 10 \"print hi\"\nrun 100 upto\n"
                    "minimize 1e-4 1e-6 100\nminimize 1e-4 1e-6 100 1000\n")
    assert found(text) == [("static.run_syntax", 11), ("static.run_syntax", 12), ("static.run_syntax", 15)]


def test_two_integrators_on_the_same_atoms():
    text = SETUP + "group a type 1\nfix 1 all nve\nfix 2 a rigid single\nrun 10\n"
    assert found(text) == [("static.double_integration", 13)]
    assert found(SETUP + "group a type 1\ngroup b type 2\nfix 1 a nve\nfix 2 b nvt temp 1 1 1\nrun 10\n") == []
