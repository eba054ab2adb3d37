"""Keep secrets out of every text mailvault writes: errors, logs, traces, reports, the catalog.

Our own commands are redacted where they are rendered (``PASS ****``), but a server may quote
what it was sent in its reply (``-ERR wrong password: hunter2``), or answer with garbage that
contains it, and that text then travels on in error messages.  So each secret, and each form of
it that goes on the wire (the base64 of an AUTH PLAIN or XOAUTH2 token), is registered here the
moment it is used, and every exit point for text (``MailvaultError.__str__``, the log formatter,
the trace writer, the fetch report) passes through :func:`redact`.  Also registered: each form
as ``repr`` escapes it, since protocol errors quote raw bytes that way.

Process-wide on purpose: with ``--jobs`` one account's error text can never carry another's
secret either.  Standard library only, so that ``mailvault.errors`` can use it.
"""

from __future__ import annotations

import threading

MASK = "****"
_LOCK = threading.Lock()
_SECRETS: tuple[str, ...] = ()  # longest first, so that a secret containing another goes whole


def register_secret(*values: str) -> None:
    """Remember secrets (and their escaped forms) to be masked in any text from now on."""
    global _SECRETS
    forms = set(_SECRETS)
    for value in values:
        if not value:
            continue
        forms.add(value)
        forms.add(repr(value)[1:-1])
        forms.add(repr(value.encode("utf-8", "surrogateescape"))[2:-1])
    forms.discard("")
    with _LOCK:
        _SECRETS = tuple(sorted(forms, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``****``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def forget_secrets() -> None:
    """Drop every registered secret.  One process runs one command, so only tests (which run
    many commands in one process) need this."""
    global _SECRETS
    with _LOCK:
        _SECRETS = ()
