"""What a user asks a simulation for (temperature, pressure, energies, box), read from the thermo output."""

from __future__ import annotations

import math

from mdagent_hpc.lammps.evaluate.stats import mean, std
from mdagent_hpc.lammps.log import LammpsLog, ThermoBlock

# thermo column -> observable name (units-style neutral: values are in the units the log was written in)
OBSERVABLE_COLUMNS = {
    "Temp": "temp",
    "Press": "press",
    "TotEng": "toteng",
    "PotEng": "pe",
    "KinEng": "ke",
    "E_pair": "epair",
    "Enthalpy": "enthalpy",
    "Volume": "vol",
    "Density": "density",
    "Lx": "lx",
    "Ly": "ly",
    "Lz": "lz",
    "Pxx": "pxx",
    "Pyy": "pyy",
    "Pzz": "pzz",
}


def observables(log: LammpsLog) -> dict[str, float]:
    """What a user asks a simulation for, read from the thermo output (docs/evaluation.md lists the keys).

    `<q>_final`: last row of the production block (the last MD block with rows); `<q>_mean`, `<q>_std`: over
    that block's rows after its first (the starting state); `<q>_mean_all`: over the rows of every MD block.
    `pe` is PotEng, else E_pair + E_mol. After a minimization, `min_pe_final` is its last energy.
    """
    md = [b for b in log.blocks if not b.minimization and b.rows and b.columns]
    out: dict[str, float] = {}

    def column(block: ThermoBlock, name: str) -> list[float] | None:
        if name in block.columns:
            return block.column(name)
        if name == "PotEng" and {"E_pair", "E_mol"} <= set(block.columns):
            return [a + b for a, b in zip(block.column("E_pair"), block.column("E_mol"), strict=True)]
        return None

    def put(key: str, value: float) -> None:
        if math.isfinite(value):
            out[key] = value

    if md:
        last = md[-1]
        for name, key in OBSERVABLE_COLUMNS.items():
            values = column(last, name)
            if values is None:
                continue
            put(f"{key}_final", values[-1])
            body = values[1:] or values
            put(f"{key}_mean", mean(body))
            put(f"{key}_std", std(body))
            every = [v for b in md for v in ((column(b, name) or [])[1:] or (column(b, name) or []))]
            if len(md) > 1 and every:
                put(f"{key}_mean_all", mean(every))
        if last.atoms is not None:
            out["atoms"] = float(last.atoms)
        if "Step" in last.columns:
            steps = last.column("Step")
            out["production_steps"] = steps[-1] - steps[0]
    minimized = [b for b in log.blocks if b.minimization and b.rows]
    if minimized and (values := column(minimized[-1], "PotEng")) is not None:
        put("min_pe_final", values[-1])
    return out
