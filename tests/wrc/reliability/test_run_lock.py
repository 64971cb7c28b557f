"""Guarantee: one run per run directory. A second run (another process, or this one) gets a clear error naming the
holder's pid and start time, and the lock dies with its holder, even killed with SIGKILL and even while forked
children of it (DataLoader workers) live on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wrc.run_lock import RunDirectoryInUseError, RunLock

RUN_LOCK_FILE = Path(__file__).resolve().parents[3] / "wrc" / "run_lock.py"
# the holder loads run_lock.py by path (it imports nothing from wrc), so it starts in milliseconds, not seconds
HOLDER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
lock = module.RunLock(sys.argv[2]).acquire()
worker = 0
if sys.argv[3] == "fork":  # a forked worker outliving its parent, like a DataLoader's
    ready, started = os.pipe()
    worker = os.fork()
    if worker == 0:
        os.write(started, b"1")  # the fork hooks have run
        time.sleep(30)
        os._exit(0)
    os.read(ready, 1)
print("locked", worker, flush=True)
sys.stdin.read()
"""


def _start_holder(run_dir: Path, fork: bool) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(RUN_LOCK_FILE), str(run_dir),
                                "fork" if fork else "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    word, worker = process.stdout.readline().split()
    assert word == "locked"
    return process, int(worker)


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path / "run"`` until it is killed."""
    process, _ = _start_holder(tmp_path / "run", fork=False)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_second_process_gets_a_clear_error(tmp_path, holder):
    run_dir = tmp_path / "run"
    with pytest.raises(RunDirectoryInUseError) as caught:
        RunLock(run_dir).acquire()
    message = str(caught.value)
    assert f"run directory {run_dir} is in use by another run (pid {holder.pid}, started at " in message
    assert message.endswith("wait for it or choose another run_dir")


def test_the_lock_dies_with_its_holder(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with RunLock(tmp_path / "run") as lock:
        assert lock.held and f'"pid": {os.getpid()}' in lock.path.read_text()


def test_two_holders_in_one_process_and_release(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirectoryInUseError, match=rf"pid {os.getpid()}, started at "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not first.held
    with RunLock(tmp_path) as second:
        assert second.held
    assert not second.held


def test_forked_workers_do_not_keep_a_dead_run_locked(tmp_path):
    process, worker = _start_holder(tmp_path / "run", fork=True)
    try:
        with pytest.raises(RunDirectoryInUseError):
            RunLock(tmp_path / "run").acquire()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        os.kill(worker, 0)  # the worker still lives
        with RunLock(tmp_path / "run") as lock:
            assert lock.held
    finally:
        process.kill()
        process.wait(timeout=10)
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
