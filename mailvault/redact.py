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
_SECRETS: tuple[str, ...] = ()  # every registered secret, for screening replies


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


def register_secret(*values: str) -> None:
    """Remember secrets to be screened and masked in any text from now on."""
    global _MASKED, _SECRETS
    with _LOCK:
        secrets = set(_SECRETS) | {v for v in values if v}
        masked = set(_MASKED)
        for value in values:
            if len(value) >= MIN_MASKED:
                masked |= {f for f in _forms(value) if len(f) >= MIN_MASKED}
        _SECRETS = tuple(secrets)
        _MASKED = tuple(sorted(masked, key=len, reverse=True))


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
    for secret in _SECRETS:
        for form in _forms(secret) | {secret.upper()}:
            form = form.casefold()
            width = min(WINDOW, len(form))
            if any(form[i : i + width] in folded for i in range(len(form) - width + 1)):
                return True
        skeleton = _ascii(secret)  # accents lost or replaced on the way back
        width = min(WINDOW, len(skeleton))
        if width and any(skeleton[i : i + width] in bare for i in range(len(skeleton) - width + 1)):
            return True
    return False


def screen(text: str) -> str:
    """A server's reply to a command that carried a secret, or WITHHELD if it may quote one."""
    return WITHHELD if may_quote(text) else text


def forget_secrets() -> None:
    """Drop every registered secret.  One process runs one command, so only tests (which run
    many commands in one process) need this."""
    global _MASKED, _SECRETS
    with _LOCK:
        _MASKED, _SECRETS = (), ()
