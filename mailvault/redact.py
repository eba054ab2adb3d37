"""Keep secrets out of every text mailvault writes: errors, logs, traces, reports, the catalog.

Our own commands are redacted where they are rendered (``PASS ****``), but a server may quote
what it was sent in its reply (``-ERR wrong password: hunter2``), or answer with garbage that
contains it, and that text then travels on in error messages.  Two defences:

* The reply to a command that carries a secret (PASS, APOP, AUTH and its continuation) is
  screened by the session before anything uses it: if the text may quote a secret in any form a
  server might give it back (any four characters of it in a row, ignoring case; its UTF-8 read
  as Latin-1 and the reverse; URL-, hex- or base64-encoded), the whole text is withheld.  This
  catches echoes that are cut short, split, re-encoded or upper-cased.
* Every exit point for text (``MailvaultError.__str__``, the log formatter, the trace writer,
  the fetch report) passes through :func:`redact`, which masks each registered secret of at
  least ``MIN_MASKED`` characters, and its escaped and encoded forms, wherever it appears.  A
  shorter one is not masked there: masking every "a" would garble every message and, by the
  gaps it leaves in known words, give the password away; the screening above still holds.

Process-wide on purpose: with ``--jobs`` one account's error text can never carry another's
secret either.  Standard library only, so that ``mailvault.errors`` can use it.
"""

from __future__ import annotations

import _thread  # not threading: a few hundred µs of every `mailvault search` start-up

# base64, binascii, contextlib and urllib.parse are imported where secrets are registered:
# `mailvault.errors` imports this module, and so every `mailvault search` start-up would pay
# for them (urllib.parse alone is ~2 ms), where only fetch and check ever register a secret.

MASK = "****"
MIN_MASKED = 4  # characters; shorter secrets are not masked in all text, see above
WINDOW = 4  # characters of a secret in a row that make a server reply suspect
WITHHELD = "(reply text withheld: it may quote the password)"
_LOCK = _thread.allocate_lock()
_MASKED: tuple[str, ...] = ()  # longest first, so that a secret containing another goes whole
# What screening looks for, worked out once per secret rather than once per reply: every run
# of WINDOW characters of each form (case-folded), and of the ASCII letters and digits alone.
_WINDOWS: frozenset[str] = frozenset()
_BARE_WINDOWS: frozenset[str] = frozenset()


def _forms(value: str) -> set[str]:
    """The ways a secret may come back in text: as sent, escaped as repr does, re-encoded."""
    import base64
    import binascii
    import contextlib
    from urllib.parse import quote

    raw = value.encode("utf-8", "surrogateescape")
    forms = {
        value,
        repr(value)[1:-1],
        repr(raw)[2:-1],
        quote(value, safe=""),
        binascii.hexlify(raw).decode(),
        base64.b64encode(raw).decode(),
        raw.decode("latin-1"),  # UTF-8 bytes shown as Latin-1 (mojibake)
        raw.decode("utf-8", "replace"),
    }
    with contextlib.suppress(UnicodeEncodeError):
        forms.add(value.encode("latin-1").decode("utf-8", "replace"))  # the reverse
    return {f for f in forms if f}


def _runs(text: str) -> set[str]:
    """Every run of WINDOW characters of ``text`` (the whole of a shorter one)."""
    width = min(WINDOW, len(text))
    return {text[i : i + width] for i in range(len(text) - width + 1)} if width else set()


def register_secret(*values: str) -> None:
    """Remember secrets to be screened and masked in any text from now on."""
    global _MASKED, _WINDOWS, _BARE_WINDOWS
    with _LOCK:
        masked, windows, bare = set(_MASKED), set(_WINDOWS), set(_BARE_WINDOWS)
        for value in filter(None, values):
            forms = _forms(value)
            if len(value) >= MIN_MASKED:
                masked |= {f for f in forms if len(f) >= MIN_MASKED}
            for form in forms | {value.upper()}:
                windows |= _runs(form.casefold())
            bare |= _runs(_ascii(value))  # accents lost or replaced on the way back
        _MASKED = tuple(sorted(masked, key=len, reverse=True))
        _WINDOWS, _BARE_WINDOWS = frozenset(windows), frozenset(bare)


def redact(text: str) -> str:
    """``text`` with every registered secret (of MIN_MASKED characters or more) masked."""
    for secret in _MASKED:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _ascii(text: str) -> str:
    return "".join(c for c in text.casefold() if c.isascii() and c.isalnum())


def may_quote(text: str) -> bool:
    """Whether ``text`` (a server's reply) may hold a registered secret, whole or in part."""
    folded, bare = text.casefold(), _ascii(text)
    return any(w in folded for w in _WINDOWS) or any(w in bare for w in _BARE_WINDOWS)


def screen(text: str) -> str:
    """A server's reply to a command that carried a secret, or WITHHELD if it may quote one."""
    return WITHHELD if may_quote(text) else text


def forget_secrets() -> None:
    """Drop every registered secret.  One process runs one command, so only tests (which run
    many commands in one process) need this."""
    global _MASKED, _WINDOWS, _BARE_WINDOWS
    with _LOCK:
        _MASKED, _WINDOWS, _BARE_WINDOWS = (), frozenset(), frozenset()
