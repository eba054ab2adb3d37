"""The envelope headers of a message: addresses, date, identifiers and subject, decoded.

Works on raw header values (as ``Message.raw_items()`` or a regex scan yields them), so the
same code serves a normal parse and the fallback scan of a message the MIME parser choked on.
Addresses are parsed before their display names are decoded: a decoded name may contain a
comma or angle bracket that would otherwise split one mailbox into two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from email.utils import getaddresses

from mailvault.maildate import parse_date as parse_mail_date
from mailvault.parse.charset import header_bytes_to_str
from mailvault.parse.encoded_words import decode_words, header_text, unfold
from mailvault.parse.model import Address

ADDRESS_FIELDS = {
    "from": "from_",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "reply-to": "reply_to",
    "sender": "sender",
}
_MSG_ID = re.compile(r"<([^<>]*[^<>\s][^<>]*)>")  # spaces inside: broken mailers write them
_LIST_ID = re.compile(r"<([^<>\s]+)>")


def addresses(values: Iterable[str]) -> tuple[Address, ...]:
    """Mailboxes of every occurrence of one address header; names decoded, addrs lower-case."""
    found: list[Address] = []
    pairs: list[tuple[str, str]] = []
    for value in values:
        cleaned = unfold(header_bytes_to_str(value))
        try:
            parsed = getaddresses([cleaned])
        except Exception:
            parsed = [("", "")]
        # The strict parser gives up on a whole header over one odd display name (a "[EXT]"
        # tag, a stray escape byte): read such a header mailbox by mailbox instead.
        if parsed == [("", "")] and cleaned.strip():
            parsed = _tolerant_addresses(cleaned)
        quoted = _quoted_strings(cleaned)
        pairs.extend(_lone_quoted(quoted, name, addr) for name, addr in parsed)
    for name, addr in pairs:
        name = decode_words(name).strip()
        addr = addr.strip()
        if "=?" in addr and "@" not in addr:  # an encoded word where a mailbox should be
            name, addr = name or decode_words(addr).strip(), ""
        elif "=?" in addr:
            addr = decode_words(addr).strip()
        if name or addr:
            found.append(Address(name=name, addr=addr.lower()))
    return tuple(found)


# A quoted string standing alone as a mailbox: after the start, a space or a list separator,
# and followed (after spaces) by the end, a separator or a comment.  Zero-width, so that one
# string's closing quote may still open the next one; one pass over the header text.
_LONE_QUOTED = re.compile(r'(?=(?:^|(?<=[\s,:;]))"([^"]*)"\s*(?:$|[,;(]))')


def _quoted_strings(text: str) -> frozenset[str]:
    """What each lone quoted string of a header holds, found in one scan: searching the whole
    header once per mailbox made a header of 10,000 addresses take most of a minute."""
    return frozenset(_LONE_QUOTED.findall(text))


def _lone_quoted(quoted: frozenset[str], name: str, addr: str) -> tuple[str, str]:
    """Python's parser reads a mailbox that is only a quoted string, ``From: "ceo@bank.example"``,
    as the address ceo@bank.example, quotes dropped (and with a comment after it,
    ``"ceo@bank.example" (CEO)``, the comment as the name).  A quoted string is no addr-spec
    (the domain of one is outside the quotes): it is a name, with no address.  ``quoted`` is
    what the header's lone quoted strings hold (`_quoted_strings`)."""
    return (addr, "") if "@" in addr and addr in quoted else (name, addr)


_ANGLE = re.compile(r"<([^<>]*)>")
_BARE_ADDR = re.compile(r"[^\s<>()\",;:\[\]]+@[^\s<>()\",;:\[\]]+")


def _split_mailboxes(text: str) -> list[str]:
    """Split at commas outside quotes, angle brackets and comments."""
    parts, start, quoted, angle, paren = [], 0, False, 0, 0
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "<":
            angle += 1
        elif ch == ">":
            angle = max(0, angle - 1)
        elif ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(0, paren - 1)
        elif ch == "," and not angle and not paren:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _tolerant_addresses(text: str) -> list[tuple[str, str]]:
    """(name, addr) per mailbox of a header the strict parser rejected: the ``<addr>`` (else the
    first bare ``local@domain``) is the address, the rest of the mailbox its name."""
    found = []
    for piece in _split_mailboxes(text):
        colon = _group_colon(piece)
        if colon >= 0:  # a group's "name:" before its first member, whatever the name spells
            piece = _group_members(piece[colon + 1 :])
        piece = piece.strip().rstrip(";")
        if all(ch.isspace() for _, ch in _outside_quotes(piece)):
            continue  # nothing, or comments only: "(Empty list)", "(no To-header on input)"
        match = _ANGLE.search(piece)
        if match is not None:
            addr, name = match.group(1).strip(), piece[: match.start()]
        else:
            bare = _BARE_ADDR.search(piece)
            addr = bare.group(0) if bare else ""
            name = piece.replace(addr, "", 1) if addr else piece
        name = name.strip().strip('"').strip().strip("()").strip()
        found.append((name, addr))
    return found


def _group_colon(piece: str) -> int:
    """Where the ``:`` ending a group's display name is, or -1: the first colon outside quotes
    and comments and before any ``<``.  The name is no address even when it spells one:
    ``"ceo@bank.example":;`` is an empty group, not the mailbox ceo@bank.example."""
    for i, ch in _outside_quotes(piece):
        if ch == "<":
            return -1
        if ch == ":":
            return i
    return -1


def _group_members(text: str) -> str:
    """What a group holds: the text after its name up to the ``;`` that closes it (a comment
    after it, ``undisclosed-recipients:; (no To-header)``, is no mailbox)."""
    end = next((i for i, ch in _outside_quotes(text) if ch == ";"), len(text))
    return text[:end]


def _outside_quotes(text: str) -> Iterator[tuple[int, str]]:
    """(index, char) of each character outside quoted strings, comments and ``<...>``; the
    ``<`` opening an angle is yielded, what is inside it is not."""
    quoted, escaped, paren, angle = False, False, 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == "(":
            paren += 1
        elif ch == ")" and paren:
            paren -= 1
        elif paren:
            continue
        elif angle:
            angle = ch != ">"
        else:
            quoted, angle = ch == '"', ch == "<"
            yield i, ch


def normalize_id(text: str) -> str:
    """A Message-ID as stored and looked up: no surrounding whitespace, and each run of
    whitespace inside (``<abc def@example.com>``, or a fold) one space."""
    return " ".join(text.split())


def message_id(value: str) -> str:
    """The first ``<id>`` of a header, without brackets; the first word when unbracketed."""
    text = unfold(header_bytes_to_str(value)).strip()
    match = _MSG_ID.search(text)
    if match is not None:
        return normalize_id(match.group(1))
    return text.split()[0] if text.split() else ""


def message_ids(value: str) -> tuple[str, ...]:
    """Every id of a References-style header, in order."""
    text = unfold(header_bytes_to_str(value))
    ids = [normalize_id(found) for found in _MSG_ID.findall(text)]
    if not ids:
        ids = [token.strip("<>,") for token in text.split() if token.strip("<>,")]
    return tuple(ids)


def list_id(value: str) -> str:
    """The machine part of a List-Id (``<list.example.com>``), else its whole decoded text."""
    text = header_text(value)
    match = _LIST_ID.search(text)
    return match.group(1) if match is not None else text


def parse_date(value: str | None, ingest_time: datetime) -> tuple[datetime, str, bool, str]:
    """(UTC date, raw text, fell back, defect or "") for a Date header value or None."""
    if value is None or not value.strip():
        return ingest_time, (value or "").strip(), True, "date: missing"
    raw = unfold(header_bytes_to_str(value)).strip()
    try:
        parsed = parse_mail_date(raw)  # "-0000" (source zone unknown, RFC 5322 3.3) is UTC
    except Exception:  # nothing in a Date header may stop a parse
        parsed = None
    if parsed is None:
        return ingest_time, raw, True, "date: unparsable"
    return parsed, raw, False, ""
