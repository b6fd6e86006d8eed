"""A skip is never silent: one whose reason is outside tests/conftest.py's ALLOWED_SKIPS fails the test run,
whether it comes from a test, a skipif mark or an importorskip at a module's top; `root_only` tests run as root."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def pytest_on(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    """pytest on one test file with this suite's conftest as a plugin (the file lives outside tests/)."""
    test = tmp_path / "test_sample.py"
    test.write_text(source)
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "conftest", str(test)]
    return subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONPATH": str(TESTS)}
    )


def test_a_skip_outside_the_allowlist_fails_the_run(tmp_path):
    result = pytest_on(
        tmp_path,
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_quiet():\n    pytest.skip('the service is not there')\n",
    )
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "test_sample.py::test_quiet: the service is not there" in result.stdout


def test_a_module_skipped_by_importorskip_fails_the_run(tmp_path):
    result = pytest_on(
        tmp_path, "import pytest\n\npytest.importorskip('no_such_module_here')\n\ndef test_never_runs():\n    pass\n"
    )
    assert result.returncode == 1, result.stdout
    assert "could not import 'no_such_module_here'" in result.stdout.split("skips outside the allowlist")[1]


def test_allowed_skips_and_root_only_tests_pass_the_run(tmp_path):
    result = pytest_on(
        tmp_path,
        "import pytest\n\n"
        "@pytest.mark.skipif(True, reason='starts Slurm: needs root')\n"
        "def test_slurm():\n    pass\n\n"
        "@pytest.mark.root_only\ndef test_as_root():\n    pass\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_known():\n    assert False\n",
    )
    assert result.returncode == 0, result.stdout
    root = os.geteuid() == 0
    assert ("1 passed, 1 skipped, 1 xfailed" if root else "2 skipped, 1 xfailed") in result.stdout
    assert "skips outside the allowlist" not in result.stdout
