"""Stopping a command: the first SIGINT or SIGTERM rolls back, a second does not interrupt the
roll-back, a third ends the process at once; pool workers never keep the vault locked."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema

from mailvault.resources import json_schema
from mailvault.testkit.fakepop import FakePop3Server, Faults
from tests.test_export_kit import add_messages, new_vault
from tests.test_fetch_faults import PLAIN, corpus, fetch_in_own_group
from tests.vaults import committed_uidls, make_vault

_ROLLBACK_THAT_TAKES_LONG = textwrap.dedent(
    """
    import sys, time
    from mailvault._signals import sigterm_interrupts
    with sigterm_interrupts():
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt as exc:
            print(type(exc).__name__, flush=True)
            time.sleep(float(sys.argv[1]))  # the roll-back
            print("rolled back", flush=True)
    """
)


def _stopper(rollback_seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _ROLLBACK_THAT_TAKES_LONG, str(rollback_seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_second_signal_does_not_interrupt_the_roll_back() -> None:
    proc = _stopper(1.0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == "Terminated\nrolled back\n"
    assert (
        err == "mailvault: already stopping: what was under way is being rolled back (a "
        "third signal stops at once; the next run clears what is left)\n"
    )


def test_a_third_signal_ends_a_roll_back_that_would_not_end() -> None:
    proc = _stopper(60.0)
    for signum in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
        proc.send_signal(signum)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert out == "KeyboardInterrupt\n" and err.count("already stopping") == 1


def _sigterm_twice(group: int) -> None:
    """A service manager's stop of the process group, and 30 ms later another (a user's)."""
    os.killpg(group, signal.SIGTERM)
    time.sleep(0.03)
    os.killpg(group, signal.SIGTERM)


def test_two_sigterms_mid_fetch_still_record_and_report_the_run(tmp_path: Path) -> None:
    """SIGTERM twice, 30 ms apart (a service manager's stop to the group, and a user's), while
    batches stream and commit: the second landed in the roll-back and left the run recorded
    as running, a report that disagreed with the catalog, or a process hung in its pool's
    shutdown with the vault locked."""
    messages = corpus(400)
    with FakePop3Server(messages, faults=Faults(slow_bytes_per_sec=4_000_000)) as server:
        account = {**PLAIN, "port": server.port, "retries": 0, "delete": "after-commit"}
        vault = make_vault(tmp_path / "vault", {"acct": account}, commit_batch_messages=16)
        proc = fetch_in_own_group(vault, "--json")
        while proc.poll() is None and not committed_uidls(vault, "acct"):
            pass
        _sigterm_twice(proc.pid)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert b"mailvault: terminated" in err.splitlines(), err
    report = json.loads(out)
    jsonschema.validate(report, json_schema("fetch-report.schema.json"))
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        (status, fetched), *more = db.execute("SELECT status, fetched FROM runs").fetchall()
    assert not more and status == "interrupted", (status, more)
    assert report["accounts"][0]["fetched"] == fetched == len(committed_uidls(vault, "acct"))


def test_two_sigterms_while_indexing_end_the_command_and_free_the_vault(tmp_path: Path) -> None:
    """The same during `mailvault index`, whose parse workers run in a pool: the second signal
    interrupted the pool's shutdown, and the command hung for good with the vault locked."""
    from mailvault.testkit.generator import generate

    root = new_vault(tmp_path / "vault")
    add_messages(root, [m.raw for m in generate(1500, 11, median_size=6000, max_size=40000)])
    argv = [sys.executable, "-m", "mailvault", "--vault", str(root), "reindex"]
    proc = subprocess.Popen(argv, start_new_session=True, stderr=subprocess.PIPE)
    catalog = root / "catalog.sqlite"

    def indexed() -> int:
        with sqlite3.connect(catalog) as db:
            return int(db.execute("SELECT indexed FROM message_counts").fetchone()[0])

    building = root / "index.new"
    while proc.poll() is None and not building.exists():
        time.sleep(0.01)
    time.sleep(0.1)  # its parse pool is up and working
    _sigterm_twice(proc.pid)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert b"mailvault: terminated" in err.splitlines(), err
    assert indexed() < 1500
    done = subprocess.run(
        [sys.executable, "-m", "mailvault", "--vault", str(root), "index"],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr  # not "locked by another process"
    assert indexed() == 1500


def test_a_pool_worker_does_not_hold_the_vault_lock(tmp_path: Path) -> None:
    """flock is held while any descriptor of it is open: a worker that outlived its command
    kept the vault locked for every later run, with no pid to kill."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from mailvault._workers import init_worker
    from mailvault.vault import open_vault

    root = new_vault(tmp_path / "vault")
    lock = str(root / "lock")
    with open_vault(root).write_lock("test"):
        assert lock in _open_files(os.getpid())
        pool = ProcessPoolExecutor(1, get_context("fork"), init_worker, (os.getpid(),))
        with pool:
            worker_files = pool.submit(_open_files, None).result(timeout=60)
        assert lock not in worker_files and worker_files


def _open_files(pid: int | None) -> list[str]:
    where = f"/proc/{pid or os.getpid()}/fd"
    names = []
    for fd in os.listdir(where):
        with contextlib.suppress(OSError):
            names.append(os.readlink(f"{where}/{fd}"))
    return names
