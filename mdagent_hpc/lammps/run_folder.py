"""The names of a LAMMPS run's files in its run folder, the same for a CalcJob and a sweep's pilot worker."""

INPUT = "in.lammps"
LOG = "log.lammps"
STDOUT = "lammps.out"
