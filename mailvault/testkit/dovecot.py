"""A private Dovecot POP3 server on 127.0.0.1 for tests, ``make demo`` and benchmarks.

Why a real Dovecot: a fake server only ever agrees with our own reading of RFC 1939; Dovecot
is what many users fetch from, so the client is tested against its real byte handling.

Nothing under /etc/dovecot is used: :meth:`Dovecot.start` writes its own ``dovecot.conf``
under ``base_dir`` and runs ``dovecot -F -c <conf>``.  Every instance has its own ports,
sockets, state and Maildirs, so several can run at once.  ``base_dir`` holds dovecot.conf,
dovecot.log, dovecot.stderr, tls/ (ca.pem, server.pem, server.key), state/, mail/<user>/Maildir
and run -> a per-start directory in the system temp dir with Dovecot's sockets and the passwd
file (short socket paths, and reachable whatever the modes of base_dir's ancestors).  start()
takes about 50-100 ms, stop() 5-300 ms.

Running as root (the harness and CI do), Dovecot's login processes run as ``dovenull`` and the
auth and mail processes as ``dovecot``; mail processes chroot into ``base_dir/mail`` before
dropping privileges, so a 0700 pytest temp dir above base_dir does not matter.  As another
user, everything runs as that user, without chroots.

Settings of note: ``pop3_uidl_format = %08Xu%08Xv`` (UIDLs are 16 lower-case hex digits:
Dovecot's %X prints lower case), plaintext USER/PASS allowed (``disable_plaintext_auth = no``;
127.0.0.1 counts as secured anyway), no growing per-IP login penalty (the anvil-auth-penalty
socket is disabled), ``auth_failure_delay = 0``.  A failed login is still answered only after
~0.5 s: Dovecot flushes failures on a 500 ms timer, and no setting removes that.

How Dovecot serves the bytes of a Maildir file (checked against Dovecot 2.3.19, see
``tests/test_dovecot_harness.py``):

* a bare LF becomes CRLF; an existing CRLF, a bare CR (also ``\\r\\r\\n``), NUL and 8-bit
  bytes are served unchanged: :func:`served_bytes` predicts the result;
* the octet count of ``LIST``/``STAT``/``+OK n octets`` is ``len(served_bytes(raw))``;
* if the message does not end with CRLF (after the LF conversion; also an empty message or
  one ending in a bare CR), RETR adds one CRLF before the terminating ``.`` line that is *not*
  counted in the octet count: :func:`retr_payload` gives what a client reads between the
  status line and the terminator after removing dot-stuffing;
* lines starting with ``.`` are dot-stuffed on the wire, as RFC 1939 says;
* a RETR marks the message seen (Dovecot renames it from ``new/`` to ``cur/``), which changes
  nothing a POP3 client can see;
* new messages get UIDs (and so UIDLs and message numbers) in the order of their Maildir file
  names, which :meth:`Dovecot.add_messages` makes sort in the order of delivery.

Dovecot always advertises PIPELINING (it is compiled in, no setting).  ``pipelining=False``
therefore puts a small relay in front of Dovecot that hides PIPELINING from CAPA, answers STLS
itself and terminates TLS itself (see :class:`_NoPipeliningRelay`); Dovecot then sees plain
connections from 127.0.0.1.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import trustme

__all__ = [
    "Dovecot",
    "DovecotNotInstalled",
    "dovecot_binary",
    "retr_payload",
    "served_bytes",
]

HOST = "127.0.0.1"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Maildir names must be unique across instances and processes, and sort in delivery order.
_SEQ = itertools.count(1)
_SEQ_LOCK = threading.Lock()
# Instances still running at interpreter exit are stopped, so their runtime dirs go too.
_RUNNING: weakref.WeakSet[Dovecot] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for instance in list(_RUNNING):
        instance.stop()


class DovecotNotInstalled(RuntimeError):
    """The ``dovecot`` binary is not on this machine (apt-get install dovecot-pop3d)."""


def dovecot_binary() -> str | None:
    """Path of the ``dovecot`` master binary, or None: tests use it to decide to skip or fail."""
    found = shutil.which("dovecot")
    if found:
        return found
    for candidate in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def served_bytes(raw: bytes) -> bytes:
    """The message as Dovecot serves it from a Maildir file holding ``raw``: bare LF -> CRLF.

    Its length is the size Dovecot reports in LIST, STAT and ``+OK n octets``.
    """
    return _BARE_LF.sub(b"\r\n", raw)


def retr_payload(raw: bytes) -> bytes:
    """What RETR sends between the status line and ``.`` once dot-stuffing is undone.

    Dovecot ends an unterminated last line with a CRLF that is not in the octet count.
    """
    served = served_bytes(raw)
    return served if served.endswith(b"\r\n") else served + b"\r\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the direct children of ``pid``, from /proc (empty if no /proc)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields is not None and int(fields[1]) == pid:
            found.append((int(entry), fields[19]))
    return found


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _alive(pid: int, start_time: str) -> bool:
    """Whether that process still runs (a zombie nobody reaps counts as gone)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[19] == start_time and fields[0] not in ("Z", "X")


class Dovecot:
    """A private Dovecot POP3 server: plain+STLS on :attr:`port`, implicit TLS on :attr:`tls_port`.

    Users are ``user -> password`` (any characters: passwords are stored base64-encoded).
    Mail lives in ``base_dir/mail/<user>/Maildir``, owned by the mail user.  A stopped
    instance can be started again (new ports, same mail); a master left running by a crashed
    run on the same base_dir is stopped by start().  The master gets SIGTERM when the thread
    that started it ends (``setpriv --pdeathsig``), so call start() from a thread that lives
    as long as the server should.

    ``extra_config`` is appended to the generated dovecot.conf (e.g. ``pop3_lock_session =
    yes`` to get ``[IN-USE]``).  ``cert_hostnames`` are the names in the server certificate;
    give a wrong one to test certificate checks.
    """

    host: str = HOST

    def __init__(
        self,
        base_dir: Path,
        users: dict[str, str] | None = None,
        *,
        pipelining: bool = True,
        extra_config: str = "",
        cert_hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.pipelining = pipelining
        self.extra_config = extra_config
        self.users: dict[str, str] = {}
        self.port = 0
        self.tls_port = 0
        self.conf_path = self.base_dir / "dovecot.conf"
        self.log_path = self.base_dir / "dovecot.log"
        self.stderr_path = self.base_dir / "dovecot.stderr"
        # The passwd file lives in the runtime dir while running; None before start().
        self.passwd_path: Path | None = None
        self.mail_root = self.base_dir / "mail"
        self.ca = trustme.CA()
        self.ca_file = self.base_dir / "tls" / "ca.pem"
        self._cert_hostnames = tuple(cert_hostnames)
        self._proc: subprocess.Popen[bytes] | None = None
        self._runtime: Path | None = None  # per start: sockets and passwd, see _make_runtime
        self._relay: _NoPipeliningRelay | None = None
        self._last_sec = 0
        self._uid, self._gid, self._internal, self._login = self._accounts()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chmod(self.mail_root, 0o711)  # explicit: the caller's umask may be 077
        for user, password in (users or {}).items():
            self.add_user(user, password)

    # -- users and mail ------------------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Add or change a user; works before and after start (Dovecot rereads the file)."""
        if not _USER_RE.match(user):
            raise ValueError(f"unusable test user name {user!r}")
        self.users[user] = password
        if self._runtime is not None:
            self._write_passwd()
        for sub in ("", "/Maildir", "/Maildir/new", "/Maildir/cur", "/Maildir/tmp"):
            path = Path(f"{self.mail_root / user}{sub}")
            path.mkdir(mode=0o700, exist_ok=True)
            self._chown(path)

    def _write_passwd(self) -> None:
        """Write the passwd file atomically; Dovecot rereads it when it changes."""
        assert self._runtime is not None
        self.passwd_path = self._runtime / "passwd"
        lines = [
            f"{name}:{{PLAIN.b64}}{base64.b64encode(pw.encode()).decode()}\n"
            for name, pw in self.users.items()
        ]
        tmp = self._runtime / "passwd.tmp"
        tmp.write_text("".join(lines))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.passwd_path)

    def maildir(self, user: str) -> Path:
        """The user's Maildir (with new/, cur/ and tmp/)."""
        if user not in self.users:
            raise KeyError(f"no such test user {user!r}")
        return self.mail_root / user / "Maildir"

    def add_messages(self, user: str, messages: Iterable[bytes]) -> list[Path]:
        """Deliver raw messages, byte for byte, into the user's Maildir/new; return the files.

        Each file is written in tmp/ and renamed into new/, owned by the mail user.  The names
        sort in delivery order, so Dovecot numbers the messages in that order.
        """
        maildir = self.maildir(user)
        written = []
        pid = os.getpid()
        for raw in messages:
            with _SEQ_LOCK:
                seq = next(_SEQ)
                self._last_sec = max(self._last_sec, int(time.time()))
                sec = self._last_sec
            name = f"{sec}.M{seq}P{pid}.mailvault-testkit,S={len(raw)}"
            tmp = maildir / "tmp" / name
            with open(tmp, "wb") as f:
                f.write(raw)
            self._chown(tmp)
            dest = maildir / "new" / name
            os.rename(tmp, dest)
            written.append(dest)
        return written

    def mailbox_count(self, user: str) -> int:
        """Number of messages in the user's Maildir (new/ + cur/)."""
        maildir = self.maildir(user)
        return sum(
            1
            for sub in ("new", "cur")
            for entry in os.scandir(maildir / sub)
            if not entry.name.startswith(".")
        )

    served_bytes = staticmethod(served_bytes)
    retr_payload = staticmethod(retr_payload)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Dovecot:
        """Write the config, start Dovecot, and return once both ports answer ``+OK``.

        Raises :class:`DovecotNotInstalled` if there is no dovecot binary, RuntimeError with
        the tail of Dovecot's log if it does not come up.
        """
        if self.running:
            raise RuntimeError("this Dovecot instance is already running")
        binary = dovecot_binary()
        if binary is None:
            raise DovecotNotInstalled("dovecot is not installed (apt-get install dovecot-pop3d)")
        self._write_tls()
        self._kill_stale()
        error = ""
        for _attempt in range(3):
            self._make_runtime()
            dovecot_port = _free_port()
            dovecot_tls_port = _free_port() if self.pipelining else 0
            self.conf_path.write_text(self._config(dovecot_port, dovecot_tls_port))
            if self.pipelining:
                self.port, self.tls_port = dovecot_port, dovecot_tls_port
            else:
                self._relay = _NoPipeliningRelay(dovecot_port, self._server_ssl_context())
                self.port = self._relay.listen(implicit_tls=False)
                self.tls_port = self._relay.listen(implicit_tls=True)
            self._spawn(binary)
            try:
                self._wait_ready()
                _RUNNING.add(self)
                return self
            except RuntimeError as exc:
                error = str(exc)
                self.stop()
                if "Address already in use" not in error:
                    break
        raise RuntimeError(error)

    def stop(self) -> None:
        """Stop Dovecot and make sure all its processes are gone; takes 5-300 ms.

        The master and its children get SIGTERM together: on its own the master often takes
        a second to stop.  A master still there after 0.3 s, and any straggler, get SIGKILL.
        """
        _RUNNING.discard(self)
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        proc, self._proc = self._proc, None
        if proc is not None:
            children = _children(proc.pid)
            if proc.poll() is None:
                proc.terminate()
            for pid, _ in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(0.3)
            except subprocess.TimeoutExpired:
                proc.kill()  # it has nothing left to save; this saves up to a second
                proc.wait(_STOP_TIMEOUT)
            deadline = time.monotonic() + _STOP_TIMEOUT
            while children and time.monotonic() < deadline:
                children = [c for c in children if _alive(*c)]
                if children:
                    time.sleep(0.01)
            for pid, _ in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
            self.passwd_path = None

    def __enter__(self) -> Dovecot:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Dovecot's log and stderr, for error messages and test failures."""
        out = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    out.append(f"--- {path.name}:\n" + "\n".join(text))
        return "\n".join(out) or "(no log output)"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _accounts() -> tuple[int, int, tuple[str, str], str]:
        """(mail uid, mail gid, (internal user, group), login user) for this process."""
        import grp
        import pwd

        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid())
            group = grp.getgrgid(os.getegid()).gr_name
            return os.geteuid(), os.getegid(), (me.pw_name, group), me.pw_name
        for name in ("dovecot", "nobody"):
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                continue
            group = grp.getgrgid(pw.pw_gid).gr_name
            login = name
            with contextlib.suppress(KeyError):
                login = pwd.getpwnam("dovenull").pw_name
            return pw.pw_uid, pw.pw_gid, (name, group), login
        raise RuntimeError("no 'dovecot' or 'nobody' user to run the mail processes as")

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self._uid, self._gid)

    def _write_tls(self) -> None:
        tls_dir = self.ca_file.parent
        tls_dir.mkdir(exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert(*self._cert_hostnames)
        cert.cert_chain_pems[0].write_to_path(str(tls_dir / "server.pem"))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(tls_dir / "server.pem"), append=True)
        cert.private_key_pem.write_to_path(str(tls_dir / "server.key"))
        os.chmod(tls_dir / "server.key", 0o600)

    def _server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_dir = self.ca_file.parent
        ctx.load_cert_chain(str(tls_dir / "server.pem"), str(tls_dir / "server.key"))
        return ctx

    def _make_runtime(self) -> None:
        """Make a fresh runtime dir in the system temp dir: Dovecot's base_dir and passwd.

        Why not under base_dir: unix socket paths must be short, and the unprivileged Dovecot
        processes must reach them and the passwd file whatever the modes of base_dir's
        ancestors (pytest makes its temp dirs 0700, and resets them at every session start).
        ``base_dir/run`` is a symlink to it, for people and for :meth:`_kill_stale`.
        """
        runtime = Path(tempfile.mkdtemp(prefix="mv-dovecot-"))
        os.chmod(runtime, 0o711)
        (runtime / "run").mkdir()
        os.chmod(runtime / "run", 0o755)
        self._runtime = runtime
        self._write_passwd()
        link = self.base_dir / "run"
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(runtime / "run")

    def _kill_stale(self) -> None:
        """Stop a master left by a crashed run on this base_dir (only if it runs our conf)."""
        link = self.base_dir / "run"
        try:
            pid = int((link / "master.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            pid, cmdline = 0, b""
        if pid and str(self.conf_path).encode() in cmdline:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + _STOP_TIMEOUT
                while _running(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
        if link.is_symlink():
            old = link.resolve().parent
            if old.name.startswith("mv-dovecot-") and old.parent == Path(tempfile.gettempdir()):
                shutil.rmtree(old, ignore_errors=True)

    def _config(self, port: int, tls_port: int) -> str:
        assert self._runtime is not None and self.passwd_path is not None
        state = self.base_dir / "state"
        state.mkdir(exist_ok=True)
        tls_dir = self.ca_file.parent
        internal_user, internal_group = self._internal
        root = os.geteuid() == 0
        # As root, mail processes chroot into mail_root ("/./" in home) before they drop to
        # the mail user, so they never need to search base_dir's ancestors.
        home = f"{self.mail_root}/./%u" if root else f"{self.mail_root}/%u"
        chroot_dirs = f"valid_chroot_dirs = {self.mail_root}\n" if root else ""
        # Without root Dovecot cannot chroot; these are the services that chroot by default.
        no_chroot = (
            ""
            if root
            else "".join(
                f"service {name} {{\n  chroot =\n}}\n"
                for name in ("anvil", "ipc", "old-stats", "pop3-login")
            )
        )
        tls_listener = (
            f"  inet_listener pop3s {{\n    address = {HOST}\n    port = {tls_port}\n"
            "    ssl = yes\n  }\n"
            if tls_port
            else "  inet_listener pop3s {\n    port = 0\n  }\n"
        )
        return f"""\
# Written by mailvault.testkit.dovecot for a private test instance; /etc/dovecot is not used.
base_dir = {self._runtime / "run"}
state_dir = {state}
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = pop3
listen = {HOST}
instance_name = mailvault-{port}
shutdown_clients = yes

default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {self._login}
first_valid_uid = {min(self._uid, 500)}
first_valid_gid = {min(self._gid, 1)}

ssl = yes
ssl_cert = <{tls_dir / "server.pem"}
ssl_key = <{tls_dir / "server.key"}

# Plain USER/PASS on the plain port; as little delay after failed logins as Dovecot allows
# (it still answers a failed login only after ~0.5 s: its failure queue runs every 500 ms).
# 127.0.0.1 counts as a secured connection anyway.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
# No login_trusted_networks: it would add "[XCLIENT]" to the greeting, unlike real servers.

mail_location = maildir:~/Maildir
{chroot_dirs}pop3_uidl_format = %08Xu%08Xv

passdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = uid={self._uid} gid={self._gid} home={home}
}}

# The documented way to turn off the growing per-IP delay after failed logins.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

protocol pop3 {{
  mail_max_userip_connections = 1000
}}

service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {port}
  }}
{tls_listener}}}
{no_chroot}
{self.extra_config}
"""

    def _spawn(self, binary: str) -> None:
        # setpriv --pdeathsig: the master dies with the process (thread) that started it, so a
        # crashed test run leaves no server behind.  Its children exit when the master does.
        cmd = [binary, "-F", "-c", str(self.conf_path)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        pending = {self.port: False, self.tls_port: True}
        last = ""
        while pending:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"dovecot exited with status {self._proc.returncode} during start\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dovecot did not answer +OK within {_START_TIMEOUT:.0f}s ({last})\n"
                    + self.log_tail()
                )
            for port, tls in list(pending.items()):
                try:
                    greeting = self._greeting(port, tls)
                except (OSError, ssl.SSLError) as exc:
                    last = f"port {port}: {exc}"
                    continue
                if not greeting:
                    last = f"port {port}: closed without a greeting"
                    continue
                if not greeting.startswith(b"+OK"):
                    raise RuntimeError(
                        f"dovecot greeted with {greeting!r} on port {port}\n" + self.log_tail()
                    )
                del pending[port]
            if pending:
                time.sleep(0.02)

    def _greeting(self, port: int, tls: bool) -> bytes:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            if tls:
                ctx = self.ssl_context()
                ctx.check_hostname = False  # cert_hostnames may be wrong on purpose
                with ctx.wrap_socket(sock) as tsock:
                    line = tsock.recv(512)
                    with contextlib.suppress(OSError):
                        tsock.sendall(b"QUIT\r\n")
                    return line
            line = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
            return line


class _Lines:
    """Buffered line reader over a socket (file objects can't survive the STLS switch)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def readline(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk


class _NoPipeliningRelay:
    """Relay in front of Dovecot's plain port that hides PIPELINING from CAPA.

    It handles one command at a time, reading the whole response before the next command,
    as a server without pipelining may.  It answers STLS and implicit TLS itself, so it also
    hides STLS from CAPA once the client talks TLS, like Dovecot does.
    """

    _MULTILINE_ALWAYS = {b"CAPA", b"RETR", b"TOP"}
    _MULTILINE_WITHOUT_ARG = {b"LIST", b"UIDL", b"AUTH"}

    def __init__(self, upstream_port: int, ctx: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.ctx = ctx
        self._listeners: list[socket.socket] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def listen(self, *, implicit_tls: bool) -> int:
        srv = socket.create_server((HOST, 0))
        self._listeners.append(srv)
        threading.Thread(target=self._accept_loop, args=(srv, implicit_tls), daemon=True).start()
        return int(srv.getsockname()[1])

    def close(self) -> None:
        self._closed = True
        for srv in self._listeners:
            with contextlib.suppress(OSError):
                srv.close()
        with self._lock:
            socks, self._open = list(self._open), set()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self, srv: socket.socket, implicit_tls: bool) -> None:
        while not self._closed:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve_safely, args=(client, implicit_tls), daemon=True
            ).start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _serve_safely(self, client: socket.socket, implicit_tls: bool) -> None:
        upstream = None
        try:
            self._track(client)
            upstream = self._track(socket.create_connection((HOST, self.upstream_port)))
            self._serve(client, upstream, implicit_tls)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self._open.discard(sock)

    def _serve(self, client: socket.socket, upstream: socket.socket, tls: bool) -> None:
        if tls:
            client = self._track(self.ctx.wrap_socket(client, server_side=True))
        creader, ureader = _Lines(client), _Lines(upstream)
        client.sendall(ureader.readline())  # greeting
        while True:
            line = creader.readline()
            if not line:
                return
            verb, _, arg = line.strip().partition(b" ")
            verb = verb.upper()
            if verb == b"STLS":
                if tls:
                    client.sendall(b"-ERR TLS is already active.\r\n")
                    continue
                if creader.buf:
                    return  # data pipelined after STLS: a client bug, drop the connection
                client.sendall(b"+OK Begin TLS negotiation now.\r\n")
                client = self._track(self.ctx.wrap_socket(client, server_side=True))
                creader, tls = _Lines(client), True
                continue
            upstream.sendall(line)
            status = ureader.readline()
            while status.startswith(b"+ ") or status.rstrip(b"\r\n") == b"+":
                client.sendall(status)  # SASL continuation
                answer = creader.readline()
                if not answer:
                    return
                upstream.sendall(answer)
                status = ureader.readline()
            if not status:
                return
            out = [status]
            multiline = verb in self._MULTILINE_ALWAYS or (
                verb in self._MULTILINE_WITHOUT_ARG and not arg.strip()
            )
            if status.startswith(b"+OK") and multiline:
                size = 0
                while True:
                    data = ureader.readline()
                    if not data:
                        client.sendall(b"".join(out))
                        return
                    if verb == b"CAPA":
                        cap = data.strip().upper()
                        if cap == b"PIPELINING" or (tls and cap == b"STLS"):
                            continue
                    out.append(data)
                    size += len(data)
                    if data == b".\r\n":
                        break
                    if size > 1 << 16:
                        client.sendall(b"".join(out))
                        out, size = [], 0
            client.sendall(b"".join(out))
            if verb == b"QUIT":
                return
