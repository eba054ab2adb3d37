"""Text the OS hands over that may not be UTF-8: arguments, file names, environment values.

Python decodes such bytes with surrogate escapes (PEP 383), which cannot be encoded as UTF-8 again:
the index, the catalog and the terminal would raise on them.  Stdlib only, no imports: the search
start-up path uses it.
"""

from __future__ import annotations


def undecodable(text: str) -> bool:
    """``text`` holds surrogate escapes of bytes that were not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown(text: str) -> str:
    """``text`` with each undecodable byte written as ``\\xNN``: printable and storable as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Code points no message may send to a terminal, for `show` and `search` alike: C0 and C1
# controls (terminal escapes; tab and newline among them, which a caller keeping lines spares),
# and the invisible format characters that make text read otherwise than it is stored or hide
# part of it: the Arabic letter mark, zero-width spaces and joiners, left-to-right and
# right-to-left marks, bidi embeddings, overrides and isolates, word joiners, the BOM.  All are
# non-printable (``str.isprintable`` is False), which lets a caller skip printable text fast.
UNSAFE_RANGES = (
    (0x00, 0x1F),
    (0x7F, 0x9F),
    (0x061C, 0x061C),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0xFEFF, 0xFEFF),
)


def storable(text: str) -> str:
    """``text`` as it can be stored as SQLite (UTF-8) text and read back as the same bytes: a
    file name is any bytes, a catalog column takes UTF-8 only.

    Valid UTF-8 is kept as it is.  Otherwise each undecodable byte is written ``\\xNN`` and each
    backslash ``\\\\``, so that a name holding the text ``\\xe9`` cannot be mistaken for one
    holding the byte; docs/sql.md gives the way back to the bytes.
    """
    if not undecodable(text):
        return text
    return shown(text.replace("\\", "\\\\"))


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(text: str, *, backslashes: bool = True) -> str:
    """``text`` with every character Python does not call printable written as its backslash
    escape (an undecodable byte as ``\\xNN``), and with ``backslashes``, a backslash as two.

    See ``cli._common.escape`` for why; ``one_line`` for when backslashes are left alone.
    """
    if text.isprintable() and not (backslashes and "\\" in text):
        return text
    out: list[str] = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch == "\\":
            out.append("\\\\" if backslashes else ch)
        elif ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte (surrogateescape): as the byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def one_line(message: str) -> str:
    """An error or warning message for one line of a terminal: it may quote what a server, a
    file or a file name said, so line breaks, terminal escapes and bidi controls are escaped.

    Backslashes are left as they are: the message may already hold escapes of its own (a path
    by ``shown``, a value by ``escape``), which a second pass would double.  Such a line cannot
    be read back exactly, only safely; values meant to be read back are escaped by the caller.
    """
    return message if message.isprintable() else escaped(message, backslashes=False)


# What JSON may leave raw inside a string that a line-based reader or a terminal acts on: DEL and
# the C1 controls (U+0085 NEL, U+009B CSI, U+009D OSC), the line and paragraph separators
# (``str.splitlines`` splits on these), and the zero-width and bidi controls that hide or
# reorder text.  All are in the BMP, so each is one ``\\uXXXX``.
_JSON_HIDDEN = "[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"


def json_safe(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the characters of
    ``_JSON_HIDDEN`` written as ``\\uXXXX``: still valid JSON that parses to the same values
    (outside its strings JSON is ASCII, so each one is inside a string, where the escape means
    the character), and one line stays one line for any reader."""
    if text.isascii() and "\x7f" not in text:
        return text
    import re  # here, not at the top: the search start-up path imports this module

    return re.sub(_JSON_HIDDEN, lambda m: f"\\u{ord(m[0]):04x}", text)
