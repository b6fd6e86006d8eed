"""The first suggestion for a missing potential file: how often is it a file a user could use?

Each case below is a short script whose potential file is missing, the task the user gave, and what a right first
suggestion is: a file holding that element, of one of the pair styles listed (the script's own style first). A
case whose expected element is None has nothing to infer it from: the right answer there is no suggestion.
The cases were written before the suggestion code they measure and were not changed after the first run.

The potentials searched are Debian's `lammps-data` folder (/usr/share/lammps/potentials), the folder a site gets.

    .venv/bin/python perf/potential_suggestions.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from mdagent_hpc.lammps.parser import parse_text
from mdagent_hpc.lammps.potentials import describe, resolve_potentials

POTENTIALS = Path("/usr/share/lammps/potentials")
EAM = ("eam", "eam/alloy", "eam/fs")
BOX = "units metal\nlattice fcc 3.6\nregion b block 0 4 0 4 0 4\ncreate_box {n} b\ncreate_atoms 1 box\n"

# (name, script, task, expected element or None, acceptable styles in order of preference)
CASES = [
    (
        "funcfl, element in the file name",
        BOX.format(n=1) + "pair_style eam\npair_coeff 1 1 Cu_mine.eam\n",
        "",
        "Cu",
        EAM,
    ),
    (
        "funcfl, element only from the mass",
        BOX.format(n=1) + "mass 1 63.546\npair_style eam\npair_coeff * * mypot.eam\n",
        "",
        "Cu",
        EAM,
    ),
    (
        "funcfl, element only from the task",
        BOX.format(n=1) + "pair_style eam\npair_coeff * * mypot.eam\n",
        "Simulate bulk nickel at 300 K and report its energy",
        "Ni",
        EAM,
    ),
    ("funcfl, bare element file", BOX.format(n=1) + "pair_style eam\npair_coeff 1 1 Al.eam\n", "", "Al", EAM),
    ("funcfl, author suffix", BOX.format(n=1) + "pair_style eam\npair_coeff * * Au_zhou.eam\n", "", "Au", EAM),
    (
        "funcfl, platinum by mass",
        BOX.format(n=1) + "mass 1 195.08\npair_style eam\npair_coeff 1 1 potential.eam\n",
        "",
        "Pt",
        EAM,
    ),
    ("funcfl, palladium name", BOX.format(n=1) + "pair_style eam\npair_coeff * * Pd_new.eam\n", "", "Pd", EAM),
    (
        "funcfl, English name in the task",
        BOX.format(n=1) + "pair_style eam\npair_coeff * * silver_pot.eam\n",
        "melting point of silver",
        "Ag",
        EAM,
    ),
    ("funcfl, nickel by mass", BOX.format(n=1) + "mass 1 58.69\npair_style eam\npair_coeff * * x.eam\n", "", "Ni", EAM),
    (
        "funcfl, aluminium by mass",
        BOX.format(n=1) + "mass 1 26.98\npair_style eam\npair_coeff * * pot.eam\n",
        "",
        "Al",
        EAM,
    ),
    (
        "funcfl, iron (no funcfl iron installed)",
        BOX.format(n=1) + "mass 1 55.845\npair_style eam\npair_coeff 1 1 Fe.eam\n",
        "",
        "Fe",
        EAM,
    ),
    (
        "funcfl, tantalum from the task",
        BOX.format(n=1) + "pair_style eam\npair_coeff * * Ta.eam\n",
        "vacancy formation energy in tantalum",
        "Ta",
        EAM,
    ),
    (
        "funcfl, gold from the task, lj-like mass",
        BOX.format(n=1) + "mass 1 1.0\npair_style eam\npair_coeff * * metal.eam\n",
        "a gold nanoparticle on a surface",
        "Au",
        EAM,
    ),
    (
        "funcfl, second type by mass",
        BOX.format(n=2) + "mass 1 63.546\nmass 2 58.693\npair_style eam\n"
        "pair_coeff 1 1 Cu_u3.eam\npair_coeff 2 2 second.eam\n",
        "",
        "Ni",
        EAM,
    ),
    (
        "funcfl, element in a comment of the script",
        BOX.format(n=1) + "# fcc copper crystal\npair_style eam\npair_coeff * * fcc.eam\n",
        "",
        "Cu",
        EAM,
    ),
    (
        "funcfl, nothing to infer from",
        BOX.format(n=1) + "pair_style eam\npair_coeff * * pot.eam\n",
        "run a short simulation",
        None,
        EAM,
    ),
    (
        "setfl, mapped elements",
        BOX.format(n=2) + "pair_style eam/alloy\npair_coeff * * mine.eam.alloy Cu Ni\n",
        "",
        "Cu Ni",
        ("eam/alloy",),
    ),
    (
        "eam/fs, mapped element",
        BOX.format(n=1) + "pair_style eam/fs\npair_coeff * * Fe_mine.eam.fs Fe\n",
        "",
        "Fe",
        ("eam/fs",),
    ),
    (
        "tersoff, mapped elements",
        BOX.format(n=2) + "pair_style tersoff\npair_coeff * * mine.tersoff Si C\n",
        "",
        "Si C",
        ("tersoff",),
    ),
    ("sw, mapped element", BOX.format(n=1) + "pair_style sw\npair_coeff * * mine.sw Si\n", "", "Si", ("sw",)),
]

SUGGESTED = re.compile(r"files holding [^:]+: ([^;]+)")


def first_suggestion(script: str, task: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        parsed = parse_text(script, "in.case", Path(tmp))
        _, diags = resolve_potentials(parsed, Path(tmp), search_path=[("lammps", POTENTIALS)], task=task)
    hints = [d.hint or "" for d in diags if d.code == "potential.missing"]
    found = SUGGESTED.search(hints[-1]) if hints else None
    return found.group(1).split(", ")[0].split(" (")[0] if found else None


def main() -> None:
    if not POTENTIALS.is_dir():
        sys.exit(f"no potentials at {POTENTIALS}: install Debian's lammps-data")
    hits = 0
    for name, script, task, element, styles in CASES:
        got = first_suggestion(script, task)
        if element is None:
            hit = got is None
        elif got is None:
            hit = False
        else:
            entry = describe(POTENTIALS / got)
            hit = set(element.split()) <= set(entry.elements) and any(s in entry.styles for s in styles)
        hits += hit
        print(f"{'hit ' if hit else 'MISS'} {name:45} expected {element or 'no suggestion':8} first: {got}")
    print(f"\nfirst suggestion right: {hits}/{len(CASES)} = {100 * hits / len(CASES):.0f} %")


if __name__ == "__main__":
    main()
