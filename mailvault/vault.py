"""A vault on disk: the directory, its config, object store, catalog and lock.

<vault>/vault.json        format marker and vault id (a uuid, quoted in export manifests)
<vault>/mailvault.toml    accounts and settings
<vault>/objects/          the object store (see store.py)
<vault>/tmp/              in-flight writes, same filesystem as objects/
<vault>/catalog.sqlite    the catalog (see catalog.py)
<vault>/index/            the derived search index
<vault>/lock              flock'ed by every writer; names the holder (pid, command) while held
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cached_property

from mailvault._parent_only import parent_only
from mailvault._text import shown, undecodable
from mailvault.errors import CatalogError, UsageError, VaultError, VaultLocked, VaultNotFound

# None of these is imported at run time: `mailvault search` opens a vault too, and `typing`
# and `pathlib` alone are several ms of its start-up (callers pass Path objects; the checks
# below use os.path, so they take any path).
# The last migration of schemas/catalog.sql (tests/test_verify.py checks): for readers that
# must not touch a newer mailvault's catalog without loading the migrations (the audit trail).
CATALOG_VERSION = 8

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from mailvault.catalog import Catalog
    from mailvault.config import Config
    from mailvault.store import BlobStore

FORMAT = "mailvault-vault"
FORMAT_VERSION = 1

CONFIG_TEMPLATE = """\
# mailvault configuration; see docs/config.md for every key.
#
# [accounts.journal]
# host = "pop.example.com"
# port = 995                      # default 995 for implicit TLS, 110 otherwise
# tls = "implicit"                # implicit | starttls | none
# user = "journal@example.com"
# password_command = "pass show mail/journal"   # or password_env / password_file (0600)
# auth = "auto"                   # auto | user | apop | plain | xoauth2
# delete = "never"                # never | after-commit
# delete_after_days = 0
# timeout = 60
# max_messages_per_session = 0

[vault]
compression = "zstd"
"""


def utcnow() -> str:
    return datetime.now(UTC).isoformat()


class Vault:
    """An opened vault.  Cheap to open: config, store and catalog load on first use."""

    def __init__(self, root: Path, vault_id: str) -> None:
        self.root = root
        self.vault_id = vault_id

    @cached_property
    def config(self) -> Config:
        from mailvault.config import load_config

        return load_config(self.config_path)

    @property
    def config_path(self) -> Path:
        return self.root / "mailvault.toml"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def index_path(self) -> Path:
        return self.root / "index"

    def store(self) -> BlobStore:
        from mailvault.store import BlobStore

        return BlobStore(self.root, compress=self.config.vault.compression == "zstd")

    def read_store(self) -> BlobStore:
        """The store for reading only (export, verify): reading does not depend on the
        compression setting, so the config (and the validation library) is not loaded."""
        from mailvault.store import BlobStore

        return BlobStore(self.root, compress=False)

    def catalog(self, *, create: bool = False) -> Catalog:
        """A new catalog connection (one per thread).  Only ``init`` creates the catalog: one
        missing from a vault is an error, since an empty one in its place would silently drop
        the holds, purges and ledger (and call every stored message an orphan)."""
        from mailvault.catalog import Catalog

        if not create and not has_catalog(self.catalog_path):
            raise CatalogError(
                f"{self.catalog_path} is missing (or empty) in the vault at {self.root}: restore "
                "it from a backup; `mailvault verify` shows what the vault still holds"
            )
        return Catalog(self.catalog_path)

    @contextlib.contextmanager
    def write_lock(self, command: str) -> Iterator[None]:
        """Hold the vault's exclusive lock; the kernel drops it if this process dies."""
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            who = try_lock(fd)
            if who is not None:
                raise VaultLocked(
                    f"vault {self.root} is locked by {who}; wait for it to finish "
                    "(the lock is released automatically if that process dies)"
                )
            write_holder(fd, command)
            try:
                with parent_only(fd):
                    yield
            finally:
                # an ended writer is named by no one (its pid may be reused: in a container
                # the last fetch was often pid 1), so nothing is taken for in flight after it
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def writer(self) -> str | None:
        """Who is writing to the vault right now (as the lock file names them), or None.

        For readers that must not take the lock (verify: a long re-hash would block the nightly
        fetch) but should know that what they see may be mid-change.  Whether the lock is held
        is read from the kernel's table of locks (``flock_holders``), not probed with flock: a
        probe would make a writer starting at that instant fail with VaultLocked; and not
        judged by the pid the file names alone: a writer killed with -9 leaves its record, and
        its pid may belong to another process by now."""
        return writer_of(self.root)


def writer_of(root: str | os.PathLike[str]) -> str | None:
    """``Vault.writer`` of the vault at ``root`` (for the search path, which opens none)."""
    path = os.path.join(root, "lock")
    try:
        with open(path, "rb") as lock:
            holder = lock_holder(lock.read(4096))
    except OSError:
        return None
    holders = flock_holders(path)
    if holders is not None and not holders:
        return None  # no one holds the lock, whatever the file still says
    if holder is None:
        return "another process" if holders else None
    pid, who = holder
    if pid == os.getpid():
        return None
    if holders is None:
        from mailvault._tempfiles import running

        return who if running(pid) else None
    return who


def flock_holders(path: str | os.PathLike[str]) -> set[int] | None:
    """The pids /proc/locks (Linux) lists as holding a flock on the file at ``path``; None
    when that cannot be told, and the caller falls back to asking whether the pid the lock
    file names runs.  A line is the file's when it shows its device and inode; one that shows
    its inode with another device (overlayfs in containers and btrfs subvolumes show another
    device there than stat gives, but so does another filesystem's file with the same inode
    number, a snapshot of the vault, say) counts only if that process has the file open."""
    try:
        st = os.stat(path)
        text = _lock_table()
    except OSError:
        return None
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2148763 0 EOF"; a waiter's line has "->"
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or not fields[5].endswith(f":{st.st_ino}"):
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if fields[5] == exact or _has_open(pid, st):
            holders.add(pid)
    return holders


def _lock_table() -> str:
    with open("/proc/locks", encoding="ascii", errors="replace") as table:
        return table.read()


def _has_open(pid: int, st: os.stat_result) -> bool:
    """Whether process ``pid`` has the file ``st`` describes open (one it cannot look into,
    another user's, is no writer of this vault: a vault is used by its owner only)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            other = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def try_lock(fd: int) -> str | None:
    """Take the exclusive flock on ``fd`` without waiting (the kernel drops it if this process
    dies): None once taken, else who holds it, as its holder wrote (``write_holder``)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(os.pread(fd, 4096, 0))
        return holder[1] if holder is not None else "another process"
    return None


def write_holder(fd: int, command: str) -> None:
    """Say in the lock file who holds it, for the message a second taker gets."""
    os.ftruncate(fd, 0)
    record = {"pid": os.getpid(), "command": command, "since": utcnow()}
    os.pwrite(fd, json.dumps(record).encode(), 0)


def lock_holder(text: bytes) -> tuple[int, str] | None:
    """(pid, 'pid N (command, since T)') from the lock file's content, if it is readable."""
    try:
        info = json.loads(text.decode("utf-8", "replace").strip())
        return int(info["pid"]), f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return None


def _new_vault_id() -> str:
    import uuid  # imported here: uuid loads platform, a few ms the search path does not need

    return str(uuid.uuid4())


def default_vault_path() -> str:
    """``$XDG_DATA_HOME/mailvault``, else ``~/.local/share/mailvault``: the vault when neither
    --vault nor MAILVAULT_VAULT names one.  A relative XDG_DATA_HOME is ignored, as the XDG
    base directory specification says; with no home directory either (HOME unset, a uid
    without a passwd entry, as in some containers) a usage error, not a traceback."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            raise UsageError(
                "no vault given and no home directory to find the default one in (HOME is "
                "unset and this user has none); give --vault PATH or set MAILVAULT_VAULT"
            )
        base = os.path.join(home, ".local", "share")
    return os.path.join(base, "mailvault")


def read_only_uri(catalog_path: str | os.PathLike[str]) -> str:
    """The URI that opens a catalog read-only (for ``sqlite3.connect(..., uri=True)``).

    The path is escaped: ``?``, ``#`` and ``%`` in a vault's path are URI syntax.  And where
    this process cannot write the catalog's directory (a read-only mount or snapshot, a vault
    made read-only with chmod) and no write-ahead log is there, ``immutable=1`` too: SQLite
    reads a WAL catalog through a ``-shm`` file it would have to create, and fails with
    "unable to open database file"; with no log, the file alone is the whole catalog, and no
    one can change it there meanwhile."""
    path = os.fspath(catalog_path)
    uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    directory = os.path.dirname(path) or "."
    if not os.access(directory, os.W_OK) and not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    return uri


def has_catalog(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a catalog to open: a non-empty regular file (SQLite would make an
    empty catalog of a missing or empty one, dropping the vault's holds, purges and ledger)."""
    try:
        return os.path.isfile(path) and os.path.getsize(path) > 0
    except OSError:
        return False


def init_vault(root: Path) -> Vault:
    """Create a new, empty vault (idempotent on an existing vault: nothing is overwritten)."""
    if (root / "vault.json").exists():
        vault = open_vault(root)
        if not has_catalog(vault.catalog_path) and not any(vault.read_store().iter_digests()):
            _finish_init(vault)  # an init cut short before its catalog: nothing to lose
        return vault
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root} exists and is not empty; choose a new directory for the vault")
    if undecodable(os.fspath(root.absolute())):
        raise UsageError(
            f"{shown(os.fspath(root))} is not a UTF-8 path (a name in another encoding), and "
            "the search index cannot live there; choose a directory whose path is UTF-8"
        )
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        for sub in ("objects", "tmp", "index"):
            (root / sub).mkdir(mode=0o700, exist_ok=True)
        config = root / "mailvault.toml"
        if not config.exists():
            config.write_text(CONFIG_TEMPLATE, encoding="utf-8")
            os.chmod(config, 0o600)
        marker = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vault_id": _new_vault_id(),
            "created_at": utcnow(),
            "hash": "sha256",
        }
        tmp = root / "vault.json.tmp"
        tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, root / "vault.json")
    except OSError as exc:
        raise VaultError(f"cannot create a vault at {root}: {exc.strerror or exc}") from None
    vault = open_vault(root)
    _finish_init(vault)
    return vault


def _finish_init(vault: Vault) -> None:
    vault.catalog(create=True).close()
    os.chmod(vault.catalog_path, 0o600)
    # An empty index too: a new vault must search (no hits, exit 1) and verify clean, not
    # ask for `mailvault index` before it holds anything.
    from mailvault.index import create_or_open

    create_or_open(vault.index_path)


def check_ownership(root: str | os.PathLike[str]) -> None:
    """Refuse a vault others could have written to: its contents could not be trusted."""
    join = os.path.join
    for path in (
        os.fspath(root),
        join(root, "objects"),
        join(root, "catalog.sqlite"),
        join(root, "mailvault.toml"),
    ):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        if info.st_uid != os.geteuid():
            raise VaultError(
                f"{path} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}); "
                "run mailvault as the vault's owner"
            )
        if info.st_mode & 0o022:
            mode = info.st_mode & 0o777
            fix = 700 if os.path.isdir(path) else 600
            raise VaultError(
                f"{path} is writable by other users (mode {mode:o}); run `chmod {fix} {path}` "
                "and check that nobody changed the vault"
            )


def open_vault(root: Path) -> Vault:
    """Open an existing vault, checking its format marker and who could have written to it."""
    return Vault(root=root, vault_id=check_vault(root))


def check_vault(root: str | os.PathLike[str]) -> str:
    """The vault's id, once its marker and permissions are checked; takes any path (and uses
    os.path), so that `mailvault search` need not import pathlib."""
    marker_path = os.path.join(root, "vault.json")
    if not os.path.exists(marker_path):
        raise VaultNotFound(
            f"no vault at {root}; create one with `mailvault --vault {root} init` "
            "or point --vault / MAILVAULT_VAULT at an existing one"
        )
    check_ownership(root)
    try:
        with open(marker_path, encoding="utf-8") as fh:
            marker = json.load(fh)
    except (OSError, ValueError) as exc:
        raise VaultError(f"{marker_path} is unreadable ({exc}); restore it from a backup") from None
    if marker.get("format") != FORMAT or marker.get("version") != FORMAT_VERSION:
        raise VaultError(
            f"{marker_path}: unsupported vault format {marker.get('format')!r} "
            f"version {marker.get('version')!r}; upgrade mailvault"
        )
    return str(marker["vault_id"])
