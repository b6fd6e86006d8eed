"""What each LAMMPS unit style means for time and energy, and which parameters make physical sense in it."""

from __future__ import annotations

from mdagent_hpc.lammps.files import number

# Default timestep (in the unit style's time unit) and Boltzmann constant (energy unit per K; 1 in lj).
DEFAULT_TIMESTEP = {
    "lj": 0.005,
    "real": 1.0,
    "metal": 0.001,
    "si": 1e-8,
    "cgs": 1e-8,
    "electron": 0.001,
    "micro": 2.0,
    "nano": 0.00045,
}
BOLTZMANN = {
    "lj": 1.0,
    "real": 0.0019872067,
    "metal": 8.617333262e-5,
    "si": 1.380649e-23,
    "cgs": 1.380649e-16,
    "electron": 3.166811563e-6,
    "micro": 1.380649e-8,
    "nano": 0.01380649,
}
TIME_UNIT = {
    "lj": "tau",
    "real": "fs",
    "metal": "ps",
    "si": "s",
    "cgs": "s",
    "electron": "fs",
    "micro": "us",
    "nano": "ns",
}
# Timesteps above these are not MD of atoms in that unit style: 20 fs in real and metal (heavy atoms with
# constraints stay below 10 fs), 0.1 tau in lj (20 default steps; DPD uses up to 0.05). Other unit styles are
# used at very different scales (granular, colloids), so they are not judged.
MAX_TIMESTEP = {"lj": 0.1, "real": 20.0, "metal": 0.02}

# fix style -> (index of Tstart in the words after the style, index of the damping); None: no damping
THERMOSTAT_ARGS = {
    "langevin": (0, 2),
    "temp/berendsen": (0, 2),
    "temp/csvr": (0, 2),
    "temp/csld": (0, 2),
    "temp/rescale": (1, None),
}
NOSE_HOOVER = ("nvt", "npt", "nph", "nvt/", "npt/", "nph/")


def timestep_problem(units: str, dt: float) -> str | None:
    """Why `dt` is not a sensible MD timestep in `units`, or None."""
    if dt <= 0:
        return f"timestep {dt:g} is not positive"
    limit = MAX_TIMESTEP.get(units)
    if limit is not None and dt > limit:
        return (
            f"timestep {dt:g} {TIME_UNIT[units]} is over {limit:g} {TIME_UNIT[units]}, far above what "
            f"{units} units integrate stably (default {DEFAULT_TIMESTEP[units]:g})"
        )
    return None


def lattice_problem(units: str, value: float, first: bool = True) -> str | None:
    """Why `lattice STYLE value` does not fit `units`: a reduced density in metal/real, a length in lj.

    In lj units only the first lattice is judged: later ones may place dense point particles (SRD solvent at
    reduced density 85)."""
    if units in ("metal", "real") and value < 1.0:
        return (
            f"units {units} read the lattice value {value:g} as a lattice constant of {value:g} Angstrom, "
            "smaller than any crystal's; it looks like an lj reduced density"
        )
    if units == "lj" and value > 3.0 and first:
        return (
            f"units lj read the lattice value {value:g} as a reduced density, far above a dense LJ solid "
            "(about 1.1); it looks like a lattice constant in Angstrom (metal or real units)"
        )
    return None


def fix_parameter_problems(words: list[str], dt: float | None) -> list[str]:
    """Thermostat/barostat settings of one `fix ID GROUP STYLE ...` that make no physical sense.

    Negative target temperatures, and damping times shorter than the timestep (the thermostat then acts
    faster than the integrator can follow). Words equal to "0" are skipped: the parser stands in "0" for values
    only known at run time.
    """
    if len(words) < 4:
        return []
    style, args = words[3].split("/kk")[0].split("/omp")[0], words[4:]
    found: list[str] = []

    def value(i: int) -> float | None:
        return number(args[i]) if i < len(args) and args[i] != "0" else None

    temps: list[tuple[str, float | None]] = []
    damps: list[tuple[str, float | None]] = []
    if style in THERMOSTAT_ARGS:
        t, d = THERMOSTAT_ARGS[style]
        temps = [("Tstart", value(t)), ("Tstop", value(t + 1))]
        if d is not None:
            damps = [("damping", value(d))]
    elif style.startswith(NOSE_HOOVER):
        for key in ("temp", "iso", "aniso", "tri", "x", "y", "z"):
            if key in args:
                k = args.index(key)
                if key == "temp":
                    temps = [("Tstart", value(k + 1)), ("Tstop", value(k + 2))]
                damps.append((f"{'Tdamp' if key == 'temp' else 'Pdamp'}", value(k + 3)))
    for name, v in temps:
        if v is not None and v < 0:
            found.append(f"fix {style} {name} is {v:g}: a temperature cannot be negative")
    if dt is not None and dt > 0:
        for name, v in damps:
            if v is not None and 0 < v < dt:
                found.append(
                    f"fix {style} {name} {v:g} is shorter than the timestep {dt:g} (use about 100 "
                    f"timesteps for a thermostat, 1000 for a barostat)"
                )
    return found
