"""The thresholds of the rules; docs/evaluation.md explains each default."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EvaluationThresholds(BaseModel):
    """Thresholds of the rules; docs/evaluation.md explains each default."""

    window_fraction: float = Field(0.2, description="last fraction of each block used for statistics")
    min_window_rows: int = Field(5, description="fewer rows than this (after the first): skip statistics")
    energy_fluct_nve: float = Field(0.05, description="NVE: std(TotEng)/|E| may be at most this / sqrt(N)")
    energy_fluct: float = Field(1.0, description="thermostatted/unknown: std(TotEng)/|E| <= this / sqrt(N)")
    temp_fluct: float = Field(3.0, description="std(Temp)/<Temp> may be at most this / sqrt(N)")
    equil_sigma: float = Field(3.0, description="a trend counts if its change over the window > this x noise")
    equil_rel_temp: float = Field(0.05, description="... and more than this fraction of <Temp>")
    equil_rel_pe: float = Field(0.01, description="... and more than this fraction of |<PotEng>|")
    equil_rel_press: float = Field(0.5, description="... and more than this fraction of |<Press>|")
    temp_target_rel: float = Field(0.10, description="tolerated |<T> - target| as a fraction of the target")
    temp_target_sigma: float = Field(2.0, description="... or this many std of Temp, whichever is larger")
    temp_target_fail_ratio: float = Field(3.0, description="<T>/target beyond this factor: error")
    press_target_sigma: float = Field(3.0, description="tolerated |<P> - target| in std of Press")
    nve_drift_kt: float = Field(
        0.005, description="NVE: max |dE/dt| per atom, in k_B<T> per 1000 default timesteps of the unit style"
    )
    nve_drift_fail_factor: float = Field(10.0, description="drift above this x nve_drift_kt: error")
    volume_jump_factor: float = Field(2.0, description="Volume/Density change between two rows: error")
    volume_change_factor: float = Field(2.0, description="max/min of Volume/Density within a block: warning")
    max_neighs_per_atom: float = Field(2000.0, description="LAMMPS' default neigh_modify one limit")
    warning_decay: float = Field(0.8, description="reward of a WARN grade: 0.5 + 0.5 * decay**warnings")
    max_findings_per_rule: int = Field(3, description="more findings of one rule are folded into a count")
