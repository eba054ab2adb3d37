"""The audit trail's one writer: who searched, showed, exported or purged (retention) what, and
how much came back or went.

Only ``sqlite3`` and ``mailvault.ledger`` are imported, so the search path stays fast.  The
entry is committed before the caller prints anything: if it cannot be recorded, nothing is
shown (fail closed).  There is no flag that turns this off.
"""

from __future__ import annotations

import os
import sqlite3

from mailvault import ledger
from mailvault._text import shown
from mailvault.errors import CatalogError
from mailvault.vault import CATALOG_VERSION, has_catalog

# `typing` is not imported at run time: it is a few ms of every `mailvault search` start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_LEFT_OPEN: list[sqlite3.Connection] = []  # see record(exiting=True)


# Where a login name is taken from by getpass and the like: set by whoever starts the process,
# so a claim, never proof (SUDO_USER: the account sudo was run from).
CLAIM_VARIABLES = ("LOGNAME", "USER", "SUDO_USER")


def os_user() -> str:
    """The OS account of the process's real uid (the password database), or ``uid N``.

    Not ``$LOGNAME``/``$USER`` (getpass.getuser()): anyone can set those, so
    ``LOGNAME=alice.auditor mailvault search ...`` would be recorded as alice.auditor, and a
    line break in one would forge a line of `mailvault audit`.  What they say is kept apart, as
    a claim (``claimed_names``).
    """
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError, ImportError):
        return f"uid {os.getuid()}"


def claimed_names(user: str | None = None) -> dict[str, str]:
    """The login names the environment claims (``CLAIM_VARIABLES``) that are not ``user`` (by
    default ``os_user()``): recorded beside the user, labelled as claims, never as the user.

    Undecodable bytes (surrogate escapes) become ``\\xNN`` text, so the value can always be
    stored and printed; JSON escapes the rest (line breaks, controls) where it is recorded.
    """
    actual = os_user() if user is None else user
    claims: dict[str, str] = {}
    for name in CLAIM_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value != actual:
            claims[name] = shown(value)
    return claims


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
    if not has_catalog(path):
        raise CatalogError(
            f"the audit entry could not be written ({path} is missing or empty); nothing is "
            "shown without one: restore the catalog from a backup"
        )
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > CATALOG_VERSION:  # a newer mailvault's: its audit trail is not ours
                raise CatalogError(
                    f"the catalog {shown(path)} has schema version {version}, written by a "
                    f"newer mailvault (this one knows up to {CATALOG_VERSION}); run that newer "
                    "mailvault (or upgrade this one): nothing is shown without an audit entry"
                )
            user = os_user()
            claims = claimed_names(user)
            if claims:
                detail = {**detail, "claimed_user": claims}
            ledger.append_audit(
                db,
                os_user=user,
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
        from mailvault._fs import nearly_full, unwritable

        directory = os.path.dirname(path) or "."
        why = unwritable(directory)
        if why is not None:
            fix = f": {why}; run it on a writable vault, or on a copy (`cp -a`)"
        elif nearly_full(directory):
            fix = ": the vault's filesystem is full; free space there and rerun"
        else:
            fix = ""
        done = "exported" if command == "export" else "shown"
        raise CatalogError(
            f"cannot record the {command} in the audit trail ({exc}); nothing is {done} "
            f"without an audit entry{fix}"
        ) from None
