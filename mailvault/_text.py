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
