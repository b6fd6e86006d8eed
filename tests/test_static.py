"""Static checks on scripts written here (no LAMMPS run): what `lmp -skiprun` cannot see."""

from pathlib import Path

from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.static import static_checks

SETUP = (
    "units lj\natom_style atomic\nlattice fcc 0.8442\nregion box block 0 4 0 4 0 4\ncreate_box 2 box\n"
    "create_atoms 1 box\nmass 1 1.0\nmass 2 1.0\npair_style lj/cut 2.5\npair_coeff * * 1.0 1.0\n"
)  # 10 lines


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
    assert found(text.replace("pair_style lj/cut 2.5\npair_coeff * * 1.0 1.0", eam) + "run 10\n") == []


def test_lattice_value_in_the_wrong_unit_style_blames_the_units_line():
    assert found(SETUP.replace("units lj", "units metal") + "run 10\n") == [("static.units", 1)]
    assert found(SETUP.replace("0.8442", "3.615") + "run 10\n") == [("static.units", 1)]
    # a second, dense lattice in lj units (SRD solvent) is not judged
    assert found(SETUP + "lattice sq 85.0\nrun 10\n") == []


def test_references_in_formulas_computes_and_dumps_must_be_defined():
    text = SETUP + (
        "fix 3 all nvt temp 1 1 0.5\nvariable e equal pe+f_3/atoms+c_3_temp\n"
        "variable bad equal f_33+v_nothing\ncompute r all reduce sum c_gone\n"
        "dump d all custom 10 d.txt id v_e v_missing\nrun 10\n"
    )
    assert found(text) == [
        ("static.undefined_reference", 13),
        ("static.undefined_reference", 13),
        ("static.undefined_reference", 14),
        ("static.undefined_reference", 15),
    ]


def test_missing_files_written_earlier_by_the_script_are_not_missing(tmp_path):
    text = (
        SETUP + "write_data saved.data\nwrite_restart r.*\nclear\nread_data saved.data\nread_restart r.100\n"
        "read_data other.data\n"
    )
    assert found(text, tmp_path) == [("file.missing", 16)]


def test_run_and_minimize_arguments_are_checked_before_the_run():
    text = SETUP + (
        'run 100.5\nrun 100 1.0\nrun 100 pre no post yes every 10 "print hi"\nrun 100 upto\n'
        "minimize 1e-4 1e-6 100\nminimize 1e-4 1e-6 100 1000\n"
    )
    assert found(text) == [("static.run_syntax", 11), ("static.run_syntax", 12), ("static.run_syntax", 15)]


def test_two_integrators_on_the_same_atoms():
    text = SETUP + "group a type 1\nfix 1 all nve\nfix 2 a rigid single\nrun 10\n"
    assert found(text) == [("static.double_integration", 13)]
    assert found(SETUP + "group a type 1\ngroup b type 2\nfix 1 a nve\nfix 2 b nvt temp 1 1 1\nrun 10\n") == []


METAL = SETUP.replace("units lj", "units metal").replace("0.8442", "3.615")


def test_a_gjf_langevin_timestep_is_a_warning_not_an_error():
    # LAMMPS's own examples/gjf (in.gjf.vhalf, in.gjf.vfull) run metal units with timestep 0.1 under fix langevin
    # ... gjf: the large step is the point of the Gronbech-Jensen/Farago integrator (fix langevin's doc)
    gjf = METAL + "timestep 0.1\nfix 1 all langevin 10 10 1 26488 gjf vhalf\nfix 2 all nve\nrun 10\n"
    script = parse_text(gjf, "in.test")
    timestep = [d for d in static_checks(script) if d.code == "static.timestep"]
    assert [(d.line, d.severity.value) for d in timestep] == [(11, "warning")]
    # without gjf (or with gjf no) it stays an error
    plain = gjf.replace(" gjf vhalf", "")
    assert [d.severity.value for d in static_checks(parse_text(plain, "in.test")) if d.code == "static.timestep"] == [
        "error"
    ]
    off = gjf.replace("gjf vhalf", "gjf no")
    assert [d.severity.value for d in static_checks(parse_text(off, "in.test")) if d.code == "static.timestep"] == [
        "error"
    ]


def test_every_file_of_a_molecule_command_and_the_map_files_of_bond_react_must_exist(tmp_path):
    # body/in.pour3d: files after keyword values; tiny_epoxy: `fix bond/react ... react ... map_file`
    for name in ("molecule.cube", "pre.mol", "post.mol", "rxn1.map"):
        (tmp_path / name).write_text("x\n")
    text = SETUP + (
        "molecule object molecule.cube molecule.tetra toff 1 molecule.rod3d toff 2 scale 1.5 "
        "molecule.point3d toff 3\nmolecule pre pre.mol\nmolecule post post.mol\n"
        "fix rxns all bond/react stabilization yes statted_grp .03 react r1 all 1 0.0 5 pre post rxn1.map "
        "prob 0.5 1234 react r2 all 1 0.0 5 pre post rxn2.map\n"
    )
    script = parse_text(text, "in.test", tmp_path)
    missing = [d.message for d in static_checks(script, tmp_path) if d.code == "file.missing"]
    assert missing == [
        "molecule file 'molecule.tetra' is not in the run folder",
        "molecule file 'molecule.rod3d' is not in the run folder",
        "molecule file 'molecule.point3d' is not in the run folder",
        "fix file 'rxn2.map' is not in the run folder",
    ]


def test_a_file_read_only_in_one_branch_of_an_if_is_a_warning(tmp_path):
    # PACKAGES/phonon/.../in.silicon: `if "${run_no} == 0" then "read_data ..." else "read_restart ..."`
    (tmp_path / "in.data").write_text("x\n")
    text = 'variable n equal 0\nif "${n} == 0" then "read_data in.data" else "read_restart r.1"\n'
    diags = [d for d in static_checks(parse_text(text, "in.test", tmp_path), tmp_path) if d.code == "file.missing"]
    assert [(d.line, d.severity.value) for d in diags] == [(2, "warning")]
    assert "r.1" in diags[0].message
