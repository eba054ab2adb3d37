"""The one exception tree of mailvault.

Every error a user can see is a ``MailvaultError`` whose message is a single line that names
the cause and, where there is one, the fix.  The CLI is the only place that turns these into
process exit codes, so library code raises and never exits.

    MailvaultError                      exit 3
    +-- UsageError                      exit 2   bad arguments, unknown account
    +-- ConfigError                     exit 2   mailvault.toml or a password source is wrong
    +-- VaultError                      exit 3
    |   +-- VaultNotFound               exit 2   no vault at the path (run `mailvault init`)
    |   +-- VaultLocked                 exit 3   another process holds the vault lock
    |   +-- StoreError                  exit 3   disk full, permissions, corrupt blob
    |   +-- CatalogError                exit 3
    |   +-- SearchError                 exit 2   (QuerySyntaxError: bad user query)
    |       +-- IndexDamaged            exit 3   the index's files cannot be read: reindex
    |       +-- IndexOutdated           exit 3   built by another version's schema: reindex
    |       +-- IndexUnavailable        exit 3   read-only filesystem or permissions
    +-- ExportError                     exit 3   export target full, read-only, of the wrong kind
    +-- RemoteError                              something about the POP3 server; carries account
        +-- TransportError       retryable       connect refused, reset, EOF, timeout
        |   +-- Stalled                          nothing received for `timeout` seconds
        +-- TLSError                             certificate / handshake / pin mismatch
        +-- ProtocolError                        the server broke RFC 1939/2449
        |   +-- OverlongLine                     one message's line is over the bound
        +-- ServerError                          a -ERR that aborts the session
            +-- AuthenticationError              [AUTH] or -ERR to PASS
            +-- MailboxInUse     retryable       [IN-USE]
            +-- LoginDelay       retryable       [LOGIN-DELAY]
            +-- TemporaryServerError  retryable  [SYS/TEMP]
            +-- PermanentServerError             [SYS/PERM]

Whether to retry is a property of the error class (``retryable``), so the retry policy in
``fetch`` needs no list of its own.
"""

from __future__ import annotations

from mailvault.redact import redact


class Terminated(KeyboardInterrupt):
    """SIGTERM during any command: stopped as Ctrl-C stops it (what was committed is kept, what
    was under way rolled back, a fetch's run recorded as interrupted), and the CLI exits 143
    instead of 130."""


class MailvaultError(Exception):
    """Base of every error mailvault reports to a user."""

    exit_code: int = 3
    retryable: bool = False

    def __str__(self) -> str:
        # A server may quote a password back in its -ERR text (see mailvault.redact).
        return redact(super().__str__())


class UsageError(MailvaultError):
    """The command line asked for something that cannot be done."""

    exit_code = 2


class ConfigError(MailvaultError):
    """mailvault.toml, or a password source it names, is invalid."""

    exit_code = 2


class VaultError(MailvaultError):
    """Something is wrong with the vault on disk."""


class VaultNotFound(VaultError):
    """There is no vault at the given path."""

    exit_code = 2


class VaultLocked(VaultError):
    """Another process holds the vault's write lock."""


class StoreError(VaultError):
    """The object store could not write or read a blob."""


class CatalogError(VaultError):
    """The SQLite catalog could not be read or written."""


class SearchError(VaultError):
    """The search index could not answer."""

    exit_code = 2


class IndexDamaged(SearchError):
    """The index's files cannot be read (damaged, or not an index at all): a runtime fault,
    not the user's, and the fix is always `mailvault reindex` (the index is derived data)."""

    exit_code = 3


class IndexOutdated(SearchError):
    """The index was built by a mailvault with another index schema (an upgrade): not the
    query's fault (a cron job read exit 2 as "bad query"); the fix is `mailvault reindex`."""

    exit_code = 3


class IndexUnavailable(SearchError):
    """The index cannot be opened where it is (a read-only filesystem, permissions): nothing
    is wrong with its files, so the fix is not a rebuild."""

    exit_code = 3


class QuerySyntaxError(SearchError, ValueError):
    """A search query the parser cannot read; the message points at the bad token."""


class ExportError(MailvaultError):
    """The export target cannot be written (full, read-only, wrong kind of file, locked)."""

    exit_code = 3


class RemoteError(MailvaultError):
    """A failure talking to a POP3 server.

    ``hint``, when given, is the fix, kept apart from the cause so that `mailvault check`
    can print it on its own line; the message is still one line: "cause; hint".
    """

    def __init__(self, message: str, *, account: str | None = None, hint: str = "") -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.account = account
        self.cause = message
        self.hint = hint


class TransportError(RemoteError):
    """The connection failed, was cut or timed out."""

    retryable = True


class Stalled(TransportError):
    """The server sent nothing for the account's timeout (fetch then tries lock-step)."""


class TLSError(RemoteError):
    """TLS handshake, certificate verification or pinning failed."""


class ProtocolError(RemoteError):
    """The server's bytes do not follow RFC 1939 / RFC 2449."""


class OverlongLine(ProtocolError):
    """A line of message data longer than the bound: one message, not the whole session, is
    at fault (fetch skips it for the rest of the run)."""


class ServerError(RemoteError):
    """The server answered -ERR where the session cannot go on."""

    default_hint = ""  # the fix for this kind of -ERR, when the caller names none

    def __init__(
        self, message: str, *, code: str | None = None, account: str | None = None, hint: str = ""
    ):
        super().__init__(message, account=account, hint=hint or self.default_hint)
        self.code = code


class AuthenticationError(ServerError):
    """The server refused the credentials."""


class MailboxInUse(ServerError):
    """[IN-USE]: another session holds the maildrop lock."""

    retryable = True
    default_hint = (
        "another client (a mail program, a second fetch, a session the server has not ended) "
        "holds the mailbox: close it, or rerun later (each run retries it `retries` times)"
    )


class LoginDelay(ServerError):
    """[LOGIN-DELAY]: the server wants us to wait before logging in again."""

    retryable = True
    default_hint = "the server allows a login only so often: run fetch less often"


class TemporaryServerError(ServerError):
    """[SYS/TEMP]: a transient server-side failure."""

    retryable = True
    default_hint = "a passing fault on the server: rerun later"


class PermanentServerError(ServerError):
    """[SYS/PERM]: the server says retrying will not help."""

    default_hint = "the server reports a lasting fault with the mailbox: ask its operator"


def server_error_for(code: str | None, message: str, *, account: str | None = None) -> ServerError:
    """Map an RFC 2449/3206 response code to the matching exception class."""
    classes: dict[str, type[ServerError]] = {
        "AUTH": AuthenticationError,
        "IN-USE": MailboxInUse,
        "LOGIN-DELAY": LoginDelay,
        "SYS/TEMP": TemporaryServerError,
        "SYS/PERM": PermanentServerError,
    }
    cls = classes.get((code or "").upper(), ServerError)
    return cls(message, code=code, account=account)


def from_storage_error(exc: BaseException, doing: str) -> MailvaultError | None:
    """The one-line error for a failure of the disk or SQLite under ``doing``, or None.

    Library code maps the errors it expects where they happen (with the path involved); this
    is the net for the rest (a full disk in the middle of indexing, say), so that what reaches
    the user is still one line with a fix, never a traceback.
    """
    import sqlite3

    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        if "disk is full" in text or "disk I/O error" in text:
            return CatalogError(
                f"the catalog could not be written while {doing} ({text}); free space on the "
                "vault's filesystem and rerun: what was committed is kept"
            )
        if "locked" in text or "busy" in text:
            return CatalogError(
                f"the catalog is locked by another program while {doing} ({text}); close it "
                "(an sqlite3 shell?) and rerun"
            )
        return CatalogError(
            f"the catalog failed while {doing} ({text}); run `mailvault verify` to check it"
        )
    if isinstance(exc, OSError):
        return disk_error(exc, doing)
    if "No space left on device" in str(exc) or "os error 28" in str(exc):  # from tantivy (Rust)
        return StoreError(
            f"disk full while {doing}; free space on the vault's filesystem and rerun: what "
            "was committed is kept"
        )
    return None


def disk_error(exc: OSError, doing: str, path: object = None) -> StoreError:
    """The one-line error for an ``OSError`` while ``doing`` something to ``path`` (else the
    file the error names): a full disk or quota, a permission, or anything else."""
    import errno

    target = path if path is not None else exc.filename
    where = f" {target}" if target else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full while {doing}{where}; free space on that filesystem and rerun: what "
            "was committed is kept"
        )
    if exc.errno == errno.EROFS:
        return StoreError(
            f"cannot write while {doing}{where}: the filesystem is mounted read-only; mount it "
            "read-write, or work on a writable copy (`cp -a`)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"no permission while {doing}{where} ({exc.strerror}); check the owner and mode "
            "of the vault and of any path given"
        )
    return StoreError(f"{doing}{where} failed: {exc.strerror or exc}")
