import json
import os
import shutil
from pathlib import Path

import pytest
from corpus import CorpusError
from corpus import build as build_corpus

pytest_plugins = ["openai_server", "services"]  # fake_openai; slurm and sshd (started once per session)

REPO = Path(__file__).resolve().parents[1]
CORPUS_ERROR = None
try:
    CORPUS = build_corpus()  # LAMMPS examples from Debian with reference logs run here; cached (tests/corpus.py)
    MANIFEST = json.loads((CORPUS / "manifest.json").read_text())["examples"]
except CorpusError as exc:  # said in one sentence once pytest has started (pytest_configure)
    CORPUS, MANIFEST, CORPUS_ERROR = Path(), [], str(exc)


# -- skips: never silent ------------------------------------------------------------------------------------
# A test that does not run is a failure of the test run, unless its skip's reason is one of these (reason: why
# that skip is acceptable). CI runs as root, so none of them skips there.
ROOT_ONLY = "needs root: starts Slurm or sshd"
ALLOWED_SKIPS = {
    # tests marked `root_only` (conftest below): they start Slurm or sshd, which only root can; a developer's
    # non-root run still runs every other test
    ROOT_ONLY: "Slurm and sshd need root",
    # the same, as tests/test_cancel.py and tests/test_sweep_run.py spell it in their own skipif marks
    "starts Slurm: needs root": "Slurm needs root",
}
_skips: list[tuple[str, str]] = []  # (nodeid, reason) of each skip outside ALLOWED_SKIPS


def pytest_configure(config):
    if CORPUS_ERROR:
        pytest.exit(CORPUS_ERROR, returncode=2)
    config.addinivalue_line("markers", f"root_only: starts Slurm or sshd; skipped unless root ('{ROOT_ONLY}')")


# -- workers (tests/run.sh: -n 3): each module whole and in order on one worker; a shared service's modules on one ---
# A module that uses the test Slurm cluster or sshd (fixtures `slurm`, `sshd`) is in SERVICE_SETS["slurm"], one that
# uses the session's vLLM server (`vllm_server`) in SERVICE_SETS["vllm"]. Each set runs on one worker, in turn, so
# that two workers never start a service twice or fill the cluster's slots under each other; the two sets can run
# side by side. Every other module is its own unit (its tests keep their order: several build on the ones before).
# A module that asks for one of those fixtures and is not in its set fails the collection.
SERVICE_SETS = {
    "slurm": (
        ("slurm", "sshd"),
        {
            "test_cancel.py",
            "test_clusters.py",
            "test_containers.py",
            "test_llm_serve.py",
            "test_pilot.py",
            "test_sweep_resume.py",
            "test_sweep_run.py",
        },
    ),
    "vllm": (
        ("vllm_server",),
        {"test_bench.py", "test_gateway.py", "test_gateway_budget.py", "test_llm_real.py", "test_llm_shared_server.py"},
    ),
}
# Units handed out first, longest first (--durations of a three-worker run: the Slurm set ~20 min, the vLLM set ~7,
# then these modules 2.5-5 min each), so that no long unit starts last.
LONG_UNITS = ("slurm", "vllm", "test_hostile.py", "test_query.py", "test_deploy_path.py", "test_server.py")


def _unit(module: str) -> str:
    name = Path(module).name
    return next((unit for unit, (_, modules) in SERVICE_SETS.items() if name in modules), module)


def pytest_xdist_make_scheduler(config, log):
    """Whole modules as units (xdist's loadgroup does not group under pytest 9.2: it renames node ids, which 9.2 no
    longer reads), each service set as one unit, the long units first."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid.split("::", 1)[0])

        def _assign_work_unit(self, node) -> None:
            for unit in reversed(LONG_UNITS):
                for scope in [s for s in self.workqueue if Path(s).name == unit]:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    strays = set()
    for item in items:
        for unit, (fixtures, modules) in SERVICE_SETS.items():
            if set(fixtures) & set(item.fixturenames) and item.path.name not in modules:
                strays.add(f"{item.path.name} (uses {'/'.join(fixtures)}: add it to SERVICE_SETS['{unit}'])")
    if strays:
        raise pytest.UsageError(f"tests/conftest.py: {'; '.join(sorted(strays))}")
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("root_only"):
                item.add_marker(pytest.mark.skip(reason=ROOT_ONLY))


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if reason not in ALLOWED_SKIPS:
            _skips.append((report.nodeid, reason))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):  # a whole module skipped (e.g. importorskip at its top)
    _record_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if _skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _skips:
        terminalreporter.section("skips outside the allowlist (tests/conftest.py ALLOWED_SKIPS): the run fails")
        for nodeid, reason in _skips:
            terminalreporter.line(f"{nodeid}: {reason}")


def copy_example(src: Path, dest: Path) -> Path:
    """A writable copy of a (read-only) corpus folder."""
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return dest


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """The test session gets its own MDAGENT_HOME (config, AiiDA profile, caches), never the developer's, and AiiDA's
    folder in it before any test runs: AiiDA fixes its folder when first imported, and a test that imported a module
    using AiiDA before any profile was loaded left every later test on that worker on ~/.aiida."""
    from mdagent_hpc.execution.profile import configure_environment

    os.environ["MDAGENT_HOME"] = str(tmp_path_factory.mktemp("mdagent-home"))
    os.environ.pop("MDAGENT_SITE_POTENTIALS", None)
    os.environ.pop("MDAGENT_AIIDA_PROFILE", None)
    configure_environment()
    from aiida.manage.configuration.settings import AiiDAConfigDir

    AiiDAConfigDir.set()  # fixed here, whatever a test later does to AIIDA_PATH (and if collecting imported AiiDA)
    for key in [k for k in os.environ if k.startswith("MDAGENT_LLM_")]:
        os.environ.pop(key)
