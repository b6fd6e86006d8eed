"""Container images of LAMMPS (Apptainer, Charliecloud): what LAMMPS an image holds, read from inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdagent_hpc.execution.image import ImageReport


def check_image(
    image: str,
    *,
    runtime: str = "apptainer",
    apptainer: str = "apptainer",
    ch_run: str = "ch-run",
    executable: str = "lmp",
    timeout: float = 300.0,
) -> ImageReport:
    """The LAMMPS version, packages and potentials folder of `image`, from `EXECUTABLE -h` run inside it by
    `runtime` (apptainer: a .sif path or an oras://, docker:// or library:// URI; charliecloud: an image folder).
    `apptainer` and `ch_run` are the runtimes' commands or paths; `timeout` bounds each run, in seconds (a URI's
    first run downloads the image). Runs here, with or without a server."""
    from mdagent_hpc.execution.image import check_image as check

    return check(
        image, apptainer=apptainer, executable=executable, timeout=timeout, runtime_name=runtime, ch_run=ch_run
    )
