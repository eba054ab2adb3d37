"""MIME header parameters (``; name="value"``), with RFC 2231 and RFC 2047 decoding.

``Message.get_param`` gives up on raw 8-bit bytes and returns RFC 2231 values as tuples that
still need a charset; here every parameter comes back as clean text: RFC 2231 continuations
(``filename*0*=``, ``filename*1*=``) joined and decoded, the common non-standard
``name="=?utf-8?B?...?="`` decoded too, and bad charsets handled by ``decode_text``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from mailvault.parse.charset import decode_text, header_bytes_to_str
from mailvault.parse.encoded_words import decode_words, unfold

_PARAM = re.compile(
    r"""\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)""",
    re.DOTALL,
)
_SECTION = re.compile(r"^(.*?)\*(\d+)(\*?)$")


def _unquote(value: str) -> str:
    """A quoted-string's content.  Only ``\\"`` and ``\\\\`` lose their backslash (what a
    sender has to escape, and what the stdlib's ``email.utils.unquote`` undoes): Windows
    clients write paths raw (``filename="C:\\Users\\a\\report.pdf"``), and dropping every
    backslash made that "C:Usersareport.pdf", which a search for report.pdf did not find."""
    value = value.strip()
    if value.startswith('"'):
        value = value[1:-1] if value.endswith('"') and len(value) > 1 else value[1:]
        return re.sub(r'\\([\\"])', r"\1", value)
    return value


def _split(value: str) -> list[tuple[str, str]]:
    """(lower-case name, raw value) for each parameter after the first ';'."""
    pairs: list[tuple[str, str]] = []
    semicolon = value.find(";")
    if semicolon < 0:
        return pairs
    rest = value[semicolon + 1 :]
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            nxt = rest.find(";", pos)
            if nxt < 0:
                break
            pos = nxt + 1
            continue
        pairs.append((match.group(1).lower(), match.group(2)))
        pos = match.end()
        nxt = rest.find(";", pos)
        if nxt < 0:
            break
        pos = nxt + 1
    return pairs


def _decode_2231(text: str, charset: str) -> str:
    return decode_text(unquote_to_bytes(text), charset or None)


def header_params(raw_value: str) -> dict[str, str]:
    """All parameters of a Content-Type/Content-Disposition value, decoded; first wins."""
    value = unfold(header_bytes_to_str(raw_value))
    plain: dict[str, str] = {}
    extended: dict[str, str] = {}  # name*=charset'lang'pct-encoded
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    for name, raw in _split(value):
        section = _SECTION.match(name)
        if section is not None:
            parts = sections.setdefault(section.group(1), {})
            parts.setdefault(int(section.group(2)), (_unquote(raw), bool(section.group(3))))
        elif name.endswith("*"):
            extended.setdefault(name[:-1], _unquote(raw))
        else:
            plain.setdefault(name, decode_words(_unquote(raw)))
    result = dict(plain)
    for name, ext in extended.items():
        charset, _, rest = ext.partition("'")
        if _:
            _lang, _, text = rest.partition("'")
            result[name] = _decode_2231(text, charset)
        else:
            result[name] = _decode_2231(ext, "")
    for name, parts in sections.items():
        ordered = [parts[i] for i in sorted(parts)]
        charset = ""
        first_text, first_encoded = ordered[0]
        if first_encoded and first_text.count("'") >= 2:
            charset, _lang, first_text = first_text.split("'", 2)
            ordered[0] = (first_text, True)
        raw_bytes = b"".join(
            unquote_to_bytes(text) if encoded else text.encode("utf-8", "surrogateescape")
            for text, encoded in ordered
        )
        result[name] = decode_words(decode_text(raw_bytes, charset or None))
    return result
