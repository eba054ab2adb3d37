"""A vault on a read-only or a full filesystem (a read-only mount, a snapshot; a disk another
program filled): what reads it can and cannot do, and errors that say so instead of calling
the vault damaged (the fix for damage, restoring a backup, would lose what was committed).

The mount is made in a private user and mount namespace (`unshare -rm`), which needs no root
on a kernel that allows unprivileged user namespaces (Debian's does) and is always there for
root; it disappears with the process.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mailvault.errors import IndexUnavailable
from mailvault.index import unavailable
from mailvault.vault import read_only_uri
from tests.test_index_support import build_vault, generated
from tests.test_search_cli import run

REPO = Path(__file__).resolve().parent.parent


def read_only(vault: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mailvault --vault VAULT ARGS`` with ``vault`` bind-mounted read-only over itself."""
    command = shlex.join([sys.executable, "-m", "mailvault", "--vault", str(vault), *args])
    mount = f"mount --bind {shlex.quote(str(vault))} {shlex.quote(str(vault))}"
    remount = f"mount -o remount,bind,ro {shlex.quote(str(vault))}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"{mount} && {remount} && exec {command}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the read-only mount")
    opened, _, _ = build_vault(tmp_path_factory.mktemp("ro") / "vault", generated(12, seed=7))
    assert run(opened, "index").exit_code == 0
    probe = read_only(opened.root, "--help")
    if probe.returncode != 0:
        pytest.fail(f"cannot make a read-only mount here: {probe.stderr.strip()}")
    return opened.root


def test_search_on_a_read_only_filesystem_says_so_not_that_the_index_is_damaged(
    vault: Path,
) -> None:
    """Tantivy takes a lock file in the index even to read: its EROFS was reported as "the
    search index is damaged; run `mailvault reindex`" (exit 3), a rebuild that cannot help."""
    result = read_only(vault, "search", "*")
    assert result.returncode == 3, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert "read-only" in result.stderr and "reindex" not in result.stderr


def test_verify_reads_a_catalog_on_a_read_only_filesystem(vault: Path) -> None:
    """With no write-ahead log left, SQLite could not open the catalog read-only (it must
    create a -shm file to read a WAL database) and verify called it corrupt."""
    assert not (vault / "catalog.sqlite-wal").exists()
    result = read_only(vault, "verify", "--json")
    report = json.loads(result.stdout)
    codes = {f["code"] for f in report["findings"]}
    assert not codes & {"catalog-corrupt", "catalog-missing"}, report
    unreadable = [f for f in report["findings"] if f["code"] == "index-unreadable"]
    assert unreadable and "read-only" in unreadable[0]["detail"], report


def on_full_tmpfs(vault: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mailvault ARGS`` on a copy of ``vault`` on a small tmpfs that a filler file has
    filled to the last byte."""
    copy = vault.parent / "on-tmpfs"
    copy.mkdir(exist_ok=True)
    command = shlex.join([sys.executable, "-m", "mailvault", "--vault", str(copy / "v"), *args])
    here = shlex.quote(str(copy))
    script = (
        f"mount -t tmpfs -o size=32m tmpfs {here} && cp -a {shlex.quote(str(vault))} {here}/v "
        f"&& (dd if=/dev/zero of={here}/filler bs=64k 2>/dev/null; true) && exec {command}"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip


def test_a_full_disk_is_not_called_a_damaged_catalog(vault: Path) -> None:
    """With no -wal/-shm left (a clean close), SQLite cannot open the catalog on a full disk:
    verify said `catalog-corrupt ... restore catalog.sqlite from a backup` and every writer
    "cannot open the catalog: disk I/O error; ... restore catalog.sqlite from a backup"."""
    result = on_full_tmpfs(vault, "verify", "--json")
    report = json.loads(result.stdout)
    found = {f["code"]: f["detail"] for f in report["findings"]}
    assert "disk-full" in found and "catalog-corrupt" not in found, report
    assert "free space" in found["disk-full"]
    writer = on_full_tmpfs(vault, "hold", "add", "h1", "*")
    assert writer.returncode == 3, writer
    assert "full" in writer.stderr and "backup" not in writer.stderr, writer.stderr


def test_tantivy_lock_errors_are_named_for_what_they_are() -> None:
    text = (
        'Failed to acquire Lockfile: IoError(Os { code: 30, kind: ReadOnlyFilesystem, message: "'
        'Read-only file system" }). None'
    )
    assert isinstance(unavailable("/v/index", ValueError(text)), IndexUnavailable)
    denied = ValueError(text.replace("30", "13").replace("Read-only file system", "Permission"))
    assert "owner" in str(unavailable("/v/index", denied))
    assert unavailable("/v/index", ValueError("Data corrupted: checksum mismatch")) is None


def test_read_only_uri_escapes_the_path(tmp_path: Path) -> None:
    """A vault path holding ? or # opened another file (or none) as the catalog."""
    odd = tmp_path / "a?b#c%d"
    odd.mkdir()
    uri = read_only_uri(odd / "catalog.sqlite")
    assert "?b" not in uri and "#" not in uri.split("?mode=")[0]
    import sqlite3

    sqlite3.connect(odd / "catalog.sqlite").execute("CREATE TABLE t(x)").connection.commit()
    with sqlite3.connect(uri, uri=True) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "--raw", "*"],
        ["export", "--format", "eml", "--out", "/tmp/unused"],
    ],
)
def test_other_commands_on_a_read_only_filesystem_say_so(vault: Path, args: list[str]) -> None:
    """show and export said "unable to open database file", export adding "restore
    catalog.sqlite from a backup", which would lose what was committed since."""
    if args[0] == "show":
        with sqlite3.connect(vault / "catalog.sqlite") as db:
            (digest,) = db.execute("SELECT sha256 FROM messages LIMIT 1").fetchone()
        args = ["show", "--raw", digest]
    result = read_only(vault, *args)
    assert result.returncode == 3, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert "read-only" in result.stderr and "backup" not in result.stderr, result.stderr


def test_verify_of_a_read_only_copy_with_a_write_ahead_log_says_what_to_do(
    vault: Path, tmp_path: Path
) -> None:
    """A copy holding catalog.sqlite-wal but no -shm, on a read-only mount: SQLite cannot read
    it in place, and verify called the catalog corrupt."""
    copy = tmp_path / "copy"
    shutil.copytree(vault, copy)
    writer = sqlite3.connect(copy / "catalog.sqlite")
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("INSERT INTO accounts VALUES ('x', 'h', 110, 'u', 'none', 'now')")
        writer.commit()
        snapshot = tmp_path / "snapshot"
        shutil.copytree(copy, snapshot)  # as a backup taken while a writer runs
    finally:
        writer.close()
    (snapshot / "catalog.sqlite-shm").unlink()
    assert (snapshot / "catalog.sqlite-wal").stat().st_size > 0
    result = read_only(snapshot, "verify", "--json")
    found = {f["code"]: f["detail"] for f in json.loads(result.stdout)["findings"]}
    assert "vault-read-only" in found and "catalog-corrupt" not in found, found
    assert "copy the vault" in found["vault-read-only"]


@pytest.mark.parametrize("command", ["index", "reindex", "hold add h1 *"])
def test_writers_on_a_read_only_filesystem_name_it(vault: Path, command: str) -> None:
    """They said "no permission ... (Read-only file system); check the owner and mode of the
    vault", a fix no chmod or chown can make."""
    result = read_only(vault, *command.split())
    assert result.returncode == 3, result
    assert "mounted read-only" in result.stderr and "owner" not in result.stderr, result.stderr
