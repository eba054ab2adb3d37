"""Bytes to text for any charset label a mail may carry, including wrong and bogus ones.

Mail lies about its charset all the time: windows-1252 curly quotes sent as iso-8859-1, UTF-8
sent as us-ascii or with no label, labels Python has never heard of.  ``decode_text`` never
raises and never drops a byte silently: it tries the label, then the usual mislabels, and only
as a last resort replaces what no decoder accepts.  Text that is mostly 8-bit and neither
UTF-8 nor honestly labelled goes through charset-normalizer's detector.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache

# Labels seen in the wild that Python does not know, or where a superset decodes more mail.
_ALIASES = {
    "unicode-1-1-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "utf8mb4": "utf-8",
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-8-e": "iso8859-8",
    "iso-8859-6-i": "iso8859-6",
    "iso-8859-6-e": "iso8859-6",
    "x-mac-roman": "mac-roman",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-greek": "mac-greek",
    "x-mac-turkish": "mac-turkish",
    "x-mac-ce": "mac-latin2",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-cn": "gb18030",
    "cn-gb": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "x-windows-949": "cp949",
    "big5": "cp950",
    "x-x-big5": "cp950",
    "iso-2022-jp": "iso2022_jp_2",
    "csiso2022jp": "iso2022_jp_2",
}

# Codecs that Python knows but that are not mail charsets (or always fail).
_REFUSED = frozenset(
    {"undefined", "unicode_escape", "raw_unicode_escape", "punycode", "idna", "mbcs", "oem"}
)

# Labels that are honest about 7-bit or 8-bit Western text but very often hide UTF-8 or
# windows-1252; for these (and for no label at all) UTF-8 is tried first.
_WESTERN = frozenset({"ascii", "latin-1", "iso8859-1", "cp1252", "utf-8"})
_HIGH_BYTES = bytes(range(0x80, 0x100))
DETECT_MIN_BYTES = 32
DETECT_MIN_HIGH_RATIO = 0.2
DETECT_SAMPLE_BYTES = 64 * 1024


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Error handler: a byte windows-1252 leaves undefined becomes the latin-1 code point."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


def _cp1252_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Error handler for UTF-8 with stray single-byte text mixed in: decode those as cp1252."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return bad.decode("cp1252", "mailvault-latin1"), exc.end


codecs.register_error("mailvault-latin1", _latin1_fallback)
codecs.register_error("mailvault-cp1252", _cp1252_fallback)


@lru_cache(maxsize=512)
def resolve_charset(label: str | None) -> str | None:
    """The Python codec name for a charset label, or None when missing, bogus or unsafe."""
    if not label:
        return None
    name = label.strip().strip("\"'").strip().lower()
    name = name.split("*", 1)[0]  # RFC 2231 "utf-8*en"
    if not name:
        return None
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _REFUSED or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


@lru_cache(maxsize=512)
def _ascii_compatible(codec: str) -> bool:
    """True when ASCII bytes mean ASCII text in this codec (not UTF-7/16/32, ISO-2022, EBCDIC)."""
    if codec.startswith(("iso2022", "hz", "utf-16", "utf-32", "utf-7")):
        return False
    sample = bytes(range(0x20, 0x7F)) + b"\r\n\t"
    try:
        return sample.decode(codec) == sample.decode("ascii")
    except Exception:
        return False


def _detect(data: bytes) -> str | None:
    """Text of undeclared or mislabelled non-Western text (KOI8, Big5, Shift_JIS...), or None.

    Western text has a few percent of 8-bit bytes and decodes fine as windows-1252; when most of
    a longer text is 8-bit it is another script, and only then is a detector worth its cost.
    """
    if len(data) < DETECT_MIN_BYTES:
        return None
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    if high < len(data) * DETECT_MIN_HIGH_RATIO:
        return None
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:DETECT_SAMPLE_BYTES]).best()
        if best is None or best.encoding is None:
            return None
        return data.decode(best.encoding, "replace")
    except Exception:
        return None


def decode_text(data: bytes, label: str | None) -> str:
    """Decode ``data`` declared as ``label``; best effort, never raises."""
    codec = resolve_charset(label)
    if codec is None or codec in _WESTERN:
        if data.isascii():
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if _mostly_utf8(data):
            # UTF-8 with a character cut short (a truncated file name) or a stray byte or two
            return data.decode("utf-8", "mailvault-cp1252")
        detected = _detect(data)
        if detected is not None:
            return detected
        if codec == "utf-8":
            # Mostly UTF-8 with a few stray windows-1252 bytes: keep the UTF-8.
            return data.decode("utf-8", "mailvault-cp1252")
        return data.decode("cp1252", "mailvault-latin1")
    if data.isascii() and _ascii_compatible(codec):
        return data.decode("ascii")
    try:
        return data.decode(codec)
    except Exception:
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(codec, "replace")
    except Exception:
        return data.decode("cp1252", "mailvault-latin1")


_STRAY = re.compile("[\udc80-\udcff]")
_WIDE = re.compile("[^\x00-\x7f\udc80-\udcff]")


def _mostly_utf8(data: bytes) -> bool:
    """Invalid UTF-8, but with at least two well-formed multi-byte characters for every bad
    byte: text that is UTF-8 apart from a damaged spot, not text in a single-byte charset (in
    which well-formed UTF-8 sequences almost never occur by chance)."""
    text = data.decode("utf-8", "surrogateescape")
    bad = len(_STRAY.findall(text))
    return bad > 0 and len(_WIDE.findall(text)) >= 2 * bad


def header_bytes_to_str(value: str) -> str:
    """Undo the parser's surrogateescape: raw 8-bit header bytes as UTF-8, else windows-1252."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return decode_text(raw, None)
