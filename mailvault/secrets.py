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


def _resolve(account: AccountConfig) -> str:
    where = f"{account.config_path or 'mailvault.toml'}: accounts.{account.name}"
    if account.password_env:
        value = os.environ.get(account.password_env)
        if not value:
            raise ConfigError(
                f"{where}: environment variable {account.password_env} is not set or empty; "
                "export it before running mailvault"
            )
        return value
    if account.password_file:
        path = Path(account.password_file).expanduser()
        if account.config_path and not path.is_absolute():
            path = account.config_path.parent / path
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read password_file {path} ({exc.strerror})"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{where}: password_file {path} is readable by other users "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{where}: password_file {path} is a directory; name the file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read password_file {path} ({exc.strerror})"
            ) from None
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise ConfigError(
                f"{where}: password_file {path} is not UTF-8 text; save it as UTF-8"
            ) from None
        if not lines:
            raise ConfigError(f"{where}: password_file {path} is empty")
        if not lines[0]:
            raise ConfigError(
                f"{where}: the first line of password_file {path} is empty; the password "
                "must be on the first line"
            )
        return lines[0]
    if account.password_command:
        returncode, stdout = _run_password_command(account.password_command, where)
        if returncode != 0:
            raise ConfigError(
                f"{where}: password_command exited with status {returncode}; "
                "run it by hand to see why"
            )
        lines = stdout.decode("utf-8", "replace").splitlines()
        if not lines or not lines[0]:
            raise ConfigError(f"{where}: password_command printed nothing on its first line")
        return lines[0]
    raise ConfigError(f"{where}: no password source configured")


COMMAND_TIMEOUT = 120  # seconds a password_command may take (a pinentry waiting for a person)


def _run_password_command(command: str, where: str) -> tuple[int, bytes]:
    """Run the command with a time limit that holds, and take its output once the shell has
    exited: a child it left running (an agent it started, gpg or a pinentry) may keep the pipe
    open, so waiting for end-of-file would wait for that child (or for ever, for a cron job).
    It stays in our session, so that a pinentry can still ask at the terminal."""
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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
    out += chunk
    return bool(chunk)


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
