"""LAMMPS inputs the tools write themselves (site tests, benchmarks): no potential file needed."""


def lj_script(cells: int, steps: int) -> str:
    """NVE steps of a Lennard-Jones fcc crystal of 4 x cells^3 atoms: needs no potential file."""
    return (
        f"units lj\nlattice fcc 0.8442\nregion box block 0 {cells} 0 {cells} 0 {cells}\ncreate_box 1 box\n"
        "create_atoms 1 box\nmass 1 1.0\nvelocity all create 1.0 87287 loop geom\npair_style lj/cut 2.5\n"
        f"pair_coeff 1 1 1.0 1.0 2.5\nfix 1 all nve\nthermo {max(1, steps // 10)}\nrun {steps}\n"
    )
