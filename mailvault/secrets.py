"""Resolve an account's password or OAuth token from its configured source.

Secrets are fetched at the first login (fetch keeps one in memory for the rest of its run, so a
password_command prompts once) and never stored: not in the catalog, the trace, the logs or an
error message.  Error messages therefore name the *source* (the variable, the file, the
command's exit status), never what it printed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import subprocess
import time
from pathlib import Path

from mailvault.config import AccountConfig
from mailvault.errors import ConfigError
from mailvault.redact import register_secret


def resolve_secret(account: AccountConfig) -> str:
    """Return the password (or XOAUTH2 token) for ``account``, registered for redaction."""
    secret = _resolve(account)
    register_secret(secret)
    return secret


MAX_OUTPUT = 65536  # bytes of a password_file or password_command output read at most


def _resolve(account: AccountConfig) -> str:
    where = f"{account.config_path or 'mailvault.toml'}: accounts.{account.name}"
    if account.password_env:
        name = account.password_env
        value = os.environb.get(os.fsencode(name))
        if not value:
            raise ConfigError(
                f"{where}: environment variable {name} is not set or empty; "
                "export it before running mailvault"
            )
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{where}: environment variable {name} is not valid UTF-8; export the "
                "password as UTF-8 text"
            ) from None
    if account.password_file:
        path = Path(account.password_file).expanduser()
        if account.config_path and not path.is_absolute():
            path = account.config_path.parent / path
        return _first_line(_read_password_file(path, where), f"{where}: password_file {path}")
    if account.password_command:
        cwd = account.config_path.parent if account.config_path else None
        returncode, stdout = _run_password_command(account.password_command, where, cwd)
        if returncode != 0:
            raise ConfigError(
                f"{where}: password_command exited with status {returncode}; "
                "run it by hand to see why"
            )
        return _first_line(stdout, f"{where}: what password_command printed")
    raise ConfigError(f"{where}: no password source configured")


def _read_password_file(path: Path, where: str) -> bytes:
    """At most ``MAX_OUTPUT`` bytes of a regular file only readable by its owner (a FIFO would
    block the run for ever, a wrong path to a big file fill memory)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read password_file {path} ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{where}: password_file {path} is a directory; name the file")
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"{where}: password_file {path} is not a regular file (a pipe or a device); "
            "name a file holding the password"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}: password_file {path} is readable by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_OUTPUT)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read password_file {path} ({exc.strerror})") from None


def _first_line(data: bytes, what: str) -> str:
    """The first line, UTF-8, without its line end.  Lines end at LF only (``splitlines``
    also ends them at form feeds and other controls, which cut such a password short)."""
    line, newline, _ = data.partition(b"\n")
    if not newline and len(data) >= MAX_OUTPUT:
        raise ConfigError(f"{what} has no line end in its first {MAX_OUTPUT} bytes")
    line = line.removesuffix(b"\r")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text; make it UTF-8") from None
    if not text:
        empty = "is empty" if not data else "has an empty first line"
        raise ConfigError(f"{what} {empty}; the password must be on the first line")
    return text


COMMAND_TIMEOUT = 120  # seconds a password_command may take (a pinentry waiting for a person)


def _run_password_command(command: str, where: str, cwd: Path | None) -> tuple[int, bytes]:
    """Run the command with a time limit that holds, and take its output once the shell has
    exited: a child it left running (an agent it started, gpg or a pinentry) may keep the pipe
    open, so waiting for end-of-file would wait for that child (or for ever, for a cron job).
    It stays in our session, so that a pinentry can still ask at the terminal.  It runs in the
    vault (``cwd``), as relative paths are read there: from cron the caller's directory is
    somewhere else."""
    proc = subprocess.Popen(
        command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = bytearray()
    deadline = time.monotonic() + COMMAND_TIMEOUT
    try:
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(command, COMMAND_TIMEOUT)
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready and not _read_some(fd, out):
                proc.wait(max(0.0, deadline - time.monotonic()))  # EOF: the shell is ending
        os.set_blocking(fd, False)  # what the shell wrote before it exited; no waiting for EOF
        while _read_some(fd, out):
            pass
    except OutputTooLong:
        _abandon(proc)
        raise ConfigError(
            f"{where}: password_command printed more than {MAX_OUTPUT} bytes and was stopped; "
            "make it print the password on one line and exit"
        ) from None
    except subprocess.TimeoutExpired:  # in the loop, or waiting for the shell to end
        _abandon(proc)
        raise ConfigError(
            f"{where}: password_command did not finish within {COMMAND_TIMEOUT} s "
            "(waiting for a passphrase prompt?); make it work without a terminal, e.g. "
            "with a running gpg-agent"
        ) from None
    except BaseException:
        _abandon(proc)
        raise
    proc.stdout.close()
    return proc.returncode, bytes(out)


def _read_some(fd: int, out: bytearray) -> bool:
    """Append what can be read now; False at end-of-file or when nothing is waiting."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return False
    if len(out) + len(chunk) > MAX_OUTPUT:
        raise OutputTooLong
    out += chunk
    return bool(chunk)


class OutputTooLong(Exception):
    """A password_command printing more than ``MAX_OUTPUT`` bytes (``yes pass``, a file
    catted by mistake): stopped, not read into memory until the time limit."""


def _abandon(proc: subprocess.Popen[bytes]) -> None:
    """Kill the shell and every process under it (a sleep, gpg, a pinentry), which killing
    the shell alone leaves running.  Found through /proc, not as a process group: the command
    stays in our foreground process group, so a pinentry can still read the terminal (in a
    group of its own it would be stopped by SIGTTIN).  A daemon it started (gpg-agent) has
    left the tree and is spared, as it should be."""
    tree = _descendants(proc.pid)
    for pid in tree:  # frozen first, so none of them forks a child the kill would miss
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    for pid in [*tree, *(p for p in _descendants(proc.pid) if p not in tree)]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    if proc.stdout is not None:
        proc.stdout.close()
    proc.wait()


def _descendants(root: int) -> list[int]:
    """The processes under ``root``, children before grandchildren (Linux /proc; elsewhere
    none, and only the shell is killed)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [root]
    while queue:
        children = parents.get(queue.pop(0), [])
        found.extend(children)
        queue.extend(children)
    return found
