"""A grammar for LAMMPS input scripts whose command and style names are those of one LAMMPS binary.

Sent as vLLM's `structured_outputs: {"grammar": ...}` (`structured_output: grammar`), it makes the model write a
script, line by line, in which every command exists in the site's LAMMPS and every style it names (pair, fix,
compute, region, dump, atom, bond, ..., variable) is compiled in: a misspelt or missing style cannot be sampled.
The names come from the binary's own lists (`lmp -h`, read by `lammps.install.capabilities`), less what the
sandbox policy refuses anyway (`lammps.policy`): no `python`, `plugin`, `shell`, `log`, network commands.

It constrains names, not meaning: arguments are free words or quoted strings of printable ASCII (LAMMPS's own
parser and preflight judge them), at most MAX_ARGS of them on a line, one command per line (no `&`). The format
is the EBNF that vLLM's xgrammar backend reads (GBNF: `name ::= ...`). Pure: no I/O.
"""

from __future__ import annotations

from mdagent_hpc.lammps.policy import REFUSED_COMMANDS, REFUSED_FIX_STYLES, REFUSED_VARIABLE_STYLES

# Commands built into LAMMPS's input parser (src/input.cpp): `lmp -h` does not list them.
CORE_COMMANDS = (
    "clear echo if include jump label next partition print quit variable angle_coeff angle_style atom_modify"
    " atom_style bond_coeff bond_style bond_write boundary comm_modify comm_style compute compute_modify"
    " dielectric dihedral_coeff dihedral_style dimension dump dump_modify fix fix_modify group improper_coeff"
    " improper_style kspace_modify kspace_style labelmap lattice mass min_modify min_style molecule neigh_modify"
    " neighbor newton package pair_coeff pair_modify pair_style pair_write processors region reset_timestep"
    " restart run_style special_bonds suffix thermo thermo_modify thermo_style timestep timer uncompute undump"
    " unfix units"
).split()
# Not offered at all: the policy refuses them, or the runner owns them (`log`), or they only make sense by hand.
LEFT_OUT = set(REFUSED_COMMANDS) | {"shell", "log", "quit", "partition"}
VARIABLE_STYLES = (
    "delete atomfile file format getenv index internal loop equal vector atom python string timer universe uloop world"
).split()

# command -> (words before the style, the `lmp -h` list its style comes from, extra names LAMMPS also accepts)
STYLED = {
    "pair_style": (0, "pair", ("none",)),
    "bond_style": (0, "bond", ("none", "zero")),
    "angle_style": (0, "angle", ("none", "zero")),
    "dihedral_style": (0, "dihedral", ("none", "zero")),
    "improper_style": (0, "improper", ("none", "zero")),
    "kspace_style": (0, "kspace", ("none",)),
    "atom_style": (0, "atom", ()),
    "run_style": (0, "integrate", ()),
    "min_style": (0, "minimize", ()),
    "region": (1, "region", ()),  # region ID style ...
    "fix": (2, "fix", ()),  # fix ID group style ...
    "compute": (2, "compute", ()),  # compute ID group style ...
    "dump": (2, "dump", ()),  # dump ID group style N file ...
    "variable": (1, "variable", ()),  # variable name style ...
}


# Bounds that no sensible script reaches, so a weak model cannot run one line on until max_tokens.
MAX_ARGS, MAX_WORD, MAX_TEXT = 48, 200, 400


def _literal(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _choice(names: list[str]) -> str:
    return " | ".join(_literal(n) for n in names)


def lammps_grammar(styles: dict[str, tuple[str, ...] | list[str]]) -> str:
    """The grammar for a binary whose style lists are `styles` ("pair" -> names, "command" -> names, ...)."""
    lists = {kind: set(names) for kind, names in styles.items()}
    lists["variable"] = set(VARIABLE_STYLES)
    refused = {"fix": set(REFUSED_FIX_STYLES), "variable": set(REFUSED_VARIABLE_STYLES), "pair": {"python"}}
    rules = []
    styled_alternatives = []
    for command, (before, kind, extra) in STYLED.items():
        names = sorted((lists.get(kind, set()) | set(extra)) - refused.get(kind, set()))
        if not names:
            continue
        rule = command.replace("_", "-") + "-name"
        rules.append(f"{rule} ::= {_choice(names)}")
        styled_alternatives.append(f"{_literal(command)}{' sp word' * before} sp {rule} args")
    plain = sorted((set(CORE_COMMANDS) | lists.get("command", set())) - set(STYLED) - LEFT_OUT)
    head = [
        "root ::= line+",
        "line ::= sp? (statement sp?)? comment? nl",
        "nl ::= [\\n]",
        "sp ::= [ \\t]{1,8}",
        f'comment ::= "#" [ -~]{{0,{MAX_TEXT}}}',
        "statement ::= styled | plain-name args",
        "styled ::= " + " | ".join(styled_alternatives),
        f"args ::= (sp arg){{0,{MAX_ARGS}}}",
        "arg ::= word | dq | sq",
        # printable ASCII but the quotes and `#`; quoted text may hold spaces and `#`
        f"word ::= [!$-&(-~]{{1,{MAX_WORD}}}",
        f'dq ::= "\\"" [ !#-~]{{0,{MAX_TEXT}}} "\\""',
        f'sq ::= "\'" [ -&(-~]{{0,{MAX_TEXT}}} "\'"',
        f"plain-name ::= {_choice(plain)}",
    ]
    return "\n".join(head + rules) + "\n"
