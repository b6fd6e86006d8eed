"""One instance of a process in a daemon: the per-process lock of workflows/broker.py (`hold`, `let_go`), taken by a
worker as it loads a process and refused to any other worker while held (a broker outage hands a running process's
task to another worker: tests/test_hostile.py's outage test is the whole story)."""

import subprocess
import sys
import textwrap

import pytest

from mdagent_hpc.workflows import broker

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mdagent_hpc.workflows import broker
    broker._lock_folder = lambda: Path(sys.argv[1])
    print("held" if broker.hold(int(sys.argv[2])) else "refused", flush=True)
    if sys.argv[3] == "stay":
        time.sleep(600)
    """
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(broker, "_lock_folder", lambda: tmp_path)
    yield tmp_path
    for pk in list(broker._HELD):
        broker.let_go(pk)


def other_worker(folder, pk: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(folder), str(pk), "go"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_process_held_here_is_refused_to_another_worker_and_to_a_second_instance_here(folder):
    assert broker.hold(7)
    assert not broker.hold(7)  # a second instance in this worker
    assert other_worker(folder, 7) == "refused"
    assert other_worker(folder, 8) == "held"  # another process is another lock
    broker.let_go(7)
    assert not (folder / "7.lock").exists()
    assert other_worker(folder, 7) == "held"


def test_a_worker_that_dies_lets_go_of_what_it_held(folder):
    holder = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(folder), "9", "stay"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not broker.hold(9)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert broker.hold(9)  # SIGKILLed: the kernel released its lock
