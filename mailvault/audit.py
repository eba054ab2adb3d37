"""The audit trail's one writer: who searched, showed or exported what, and how much came back.

Only ``sqlite3`` and ``mailvault.ledger`` are imported, so the search path stays fast.  The
entry is committed before the caller prints anything: if it cannot be recorded, nothing is
shown (fail closed).  There is no flag that turns this off.
"""

from __future__ import annotations

import os
import sqlite3

from mailvault import ledger
from mailvault.errors import CatalogError

# `typing` is not imported at run time: it is a few ms of every `mailvault search` start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_LEFT_OPEN: list[sqlite3.Connection] = []  # see record(exiting=True)


def os_user() -> str:
    """As getpass.getuser() (the login name from the environment, else the password database),
    without importing getpass, which loads termios: part of every search's start-up."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError, ImportError):
        return f"uid {os.getuid()}"


def record(
    vault_root: str | os.PathLike[str],
    command: str,
    query: str | None,
    results: int,
    *,
    exiting: bool = False,
    **detail: Any,
) -> None:
    """Append one durable, hash-chained audit entry.

    ``exiting``: the caller ends the process next (without interpreter teardown), so the
    connection is left open: closing the last connection checkpoints the WAL into the database
    file, a write and an fsync (~0.6 ms of every search) that the next writer does anyway.  The
    entry itself is durable once COMMIT returns (WAL, synchronous=FULL).
    """
    path = os.path.join(vault_root, "catalog.sqlite")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:  # connecting would create it
        raise CatalogError(
            f"the audit entry could not be written ({path} is missing or empty); nothing is "
            "shown without one: restore the catalog from a backup"
        )
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            ledger.append_audit(
                db,
                os_user=os_user(),
                command=command,
                query=query,
                results=results,
                detail=detail or None,
            )
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        if exiting:
            _LEFT_OPEN.append(db)
        else:
            db.close()
    except sqlite3.Error as exc:
        raise CatalogError(
            f"cannot record the {command} in the audit trail ({exc}); nothing is shown "
            "without an audit entry"
        ) from None
