"""What the parse stage knows about one message: the contract between parse, catalog and index.

Parsing never fails: a message the parser cannot read at all still yields a ``ParsedMessage``
with ``unreadable=True``, whatever fields could be recovered, and the reason in ``defects``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: display name as written (decoded), address lower-cased."""

    name: str
    addr: str

    def mailbox(self) -> str:
        """``"Name" <addr>`` as RFC 5322 writes it: a name with specials (``@ , < > ...``) in
        double quotes, so a name such as ``ceo@bank.example`` cannot pass for the address.
        A name without an address is ``Name <>``: ``From: "ceo@bank.example" <>`` was written
        bare, as ``ceo@bank.example``, which reads as the address it is not."""
        if not self.name:
            return self.addr
        name = self.name
        if any(c in _SPECIALS for c in name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{self.addr}>"


_SPECIALS = frozenset('()<>[]:;@\\,."')


@dataclass(frozen=True, slots=True)
class Attachment:
    """A non-body part: an attachment or an inline part with a filename."""

    index: int  # position in a depth-first walk of the MIME tree, from 0 (as `show --part N`)
    filename: str  # decoded (RFC 2047 / RFC 2231), "" if none
    content_type: str  # lower-case "type/subtype"
    size: int  # decoded bytes
    sha256: str  # of the decoded bytes
    text: str = ""  # extracted text (text/* and PDF), capped


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    sha256: str
    size: int
    message_id: str  # without angle brackets, "" if none
    subject: str
    from_: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    sender: tuple[Address, ...] = ()
    date: datetime | None = None  # aware, UTC; falls back to the ingest time when missing/bad
    date_raw: str = ""  # the Date header as written
    date_fallback: bool = False  # True when `date` is the ingest time, not the header
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    list_id: str = ""
    thread_id: str = ""  # the root as far as this message tells; search widens it (engine)
    body_text: str = ""  # text/plain parts, HTML turned to text, nested message/rfc822 bodies
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = field(default_factory=tuple)
    unreadable: bool = False
