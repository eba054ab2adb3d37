"""Body text and attachments of a parsed MIME tree.

One pass over the parts in ``mime.walk`` order decides for each leaf whether it is body text
(inline text/* without a filename), or an attachment (a filename, ``Content-Disposition:
attachment``, or any non-text leaf), and reads what text it can.  multipart/alternative keeps
the plain version and adds from the HTML version only the lines carrying words the plain one
lacks, so every word stays findable without doubling the body.  Enclosed messages contribute
their From/To/Date/Subject lines and their own bodies and attachments.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email.message import Message

from mailvault.parse.charset import decode_text
from mailvault.parse.encoded_words import header_text
from mailvault.parse.html_text import html_to_text
from mailvault.parse.mime import content_bytes, payload_bytes, walk
from mailvault.parse.model import Attachment
from mailvault.parse.params import header_params
from mailvault.parse.pdf_text import pdf_text
from mailvault.parse.skeleton import Cut, enclosed_messages

# Body text is read from the body parts' decoded content, all parts of a message together, up
# to this many bytes (16 MiB: what `show` prints).  The index reads less (indexer.INDEX_BODY_BYTES);
# the message itself is always stored, exported and given by `show --raw` whole.
MAX_BODY_TEXT_BYTES = 16 * 1024 * 1024
MAX_ATTACHMENTS_TEXT_CHARS = 4 * 1024 * 1024  # text of all attachments together
MAX_HTML_BYTES = 4 * 1024 * 1024
MAX_TEXT_ATTACHMENT_BYTES = 2 * 1024 * 1024
MAX_ATTACHMENT_CHARS = 100_000
ENCLOSED_HEADERS = ("From", "To", "Date", "Subject")

_WORD = re.compile(r"\w+")
_NEWLINES = re.compile(r"\r\n?")


@dataclass
class _Piece:
    """A run of body text; ``group`` is the index of its multipart/alternative, or -1."""

    text: str
    group: int = -1
    html: bool = False


@dataclass
class Content:
    body_text: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # what is left to read: body bytes, attachment text characters (the caps above)
    body_left: int = MAX_BODY_TEXT_BYTES
    attachment_text_left: int = field(default_factory=lambda: MAX_ATTACHMENTS_TEXT_CHARS)


def _first_header(part: Message, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _text(data: bytes, charset: str | None) -> str:
    return _NEWLINES.sub("\n", decode_text(data, charset))


def _is_pdf(content_type: str, filename: str, data: bytes) -> bool:
    return (
        content_type == "application/pdf"
        or filename.lower().endswith(".pdf")
        or data[:1024].lstrip().startswith(b"%PDF-")
    )


def _attachment_text(
    content_type: str, filename: str, charset: str | None, data: bytes
) -> tuple[str, str]:
    """The attachment's text, and the cap that cost some or all of it ("" if none did)."""
    if content_type.startswith("text/"):
        text = _text(data[:MAX_TEXT_ATTACHMENT_BYTES], charset)
        if content_type == "text/html":
            text = html_to_text(text)
        if len(text) > MAX_ATTACHMENT_CHARS or len(data) > MAX_TEXT_ATTACHMENT_BYTES:
            return text[:MAX_ATTACHMENT_CHARS], (
                f"only its first {MAX_ATTACHMENT_CHARS:,} characters are read"
            )
        return text, ""
    if _is_pdf(content_type, filename, data):
        extracted = pdf_text(data)
        return extracted.text, extracted.limit
    return "", ""


def _enclosed_headers(inner: Message) -> str:
    lines = []
    for name in ENCLOSED_HEADERS:
        value = _first_header(inner, name.lower())
        if value is not None:
            lines.append(f"{name}: {header_text(value)}")
    return "\n".join(lines)


def _status_fields(blocks: list[Message]) -> str:
    """A delivery report's fields (Final-Recipient, Status, Diagnostic-Code) as text lines."""
    return "\n\n".join(
        "\n".join(f"{name}: {header_text(str(value))}" for name, value in block.raw_items())
        for block in blocks
    )


def _merge(pieces: list[_Piece]) -> str:
    """Body text in document order, alternatives collapsed as the module docstring says."""
    groups: dict[int, list[_Piece]] = {}
    for piece in pieces:
        if piece.group >= 0:
            groups.setdefault(piece.group, []).append(piece)
    out: list[str] = []
    emitted: set[int] = set()
    for piece in pieces:
        if piece.group < 0:
            out.append(piece.text)
            continue
        if piece.group in emitted:
            continue
        emitted.add(piece.group)
        members = groups[piece.group]
        plain = "\n".join(p.text for p in members if not p.html).strip()
        html = [p.text for p in members if p.html]
        if not plain:
            out.extend(html)
            continue
        out.append(plain)
        known = set(_WORD.findall(plain.casefold()))
        extra = [
            line
            for text in html
            for line in text.split("\n")
            if not known.issuperset(_WORD.findall(line.casefold()))
        ]
        if extra:
            out.append("\n".join(extra))
    return "\n\n".join(t.strip() for t in out if t.strip())


def extract(
    msg: Message, raw: bytes | None = None, *, body_limit: int = MAX_BODY_TEXT_BYTES
) -> Content:
    """Body text, attachments and per-part parser defects of a message tree.

    ``raw``, the bytes ``msg`` was parsed from, gives an attached message's size and sha256 as
    the message is stored in them (what ``show --part`` writes), not as the parser would
    write it out again (line ends and header folding changed).  ``body_limit``: body bytes to
    read for text, all body parts together (at most ``MAX_BODY_TEXT_BYTES``); the parts past
    it are read no further, so a long body costs no more than that many bytes of text."""
    content = Content(body_left=min(body_limit, MAX_BODY_TEXT_BYTES))
    limit = content.body_left
    enclosed = _AttachedMessages(raw, msg)
    pieces: list[_Piece] = []
    alternative_of: dict[int, int] = {}  # id(part) -> index of its nearest alternative
    for index, _depth, part in walk(msg):
        group = alternative_of.get(id(part), -1)
        content_type = part.get_content_type()
        maintype = content_type.partition("/")[0]
        if part.is_multipart():
            payload = part.get_payload()
            children = [c for c in payload if isinstance(c, Message)] if payload else []
            inner_group = index if content_type == "multipart/alternative" else group
            for child in children:
                alternative_of[id(child)] = inner_group
            if content_type == "message/delivery-status":
                pieces.append(_Piece(_status_fields(children)))
            elif maintype == "message" and children:
                headers = _enclosed_headers(children[0])
                if headers:
                    pieces.append(_Piece(headers))
        _leaf(index, part, content_type, group, pieces, content, enclosed)
        content.defects.extend(type(d).__name__ for d in part.defects)
    if content.body_left < 0:
        content.defects.append(f"body: text past its first {limit} bytes not read")
    content.body_text = _merge(pieces)
    return content


def _leaf(
    index: int,
    part: Message,
    content_type: str,
    group: int,
    pieces: list[_Piece],
    content: Content,
    enclosed: _AttachedMessages,
) -> None:
    """Body text or an attachment record for one part (containers only when attached)."""
    ct_params = header_params(_first_header(part, "content-type") or "")
    disposition_raw = _first_header(part, "content-disposition") or ""
    cd_params = header_params(disposition_raw)
    disposition = disposition_raw.split(";", 1)[0].strip().lower()
    filename = cd_params.get("filename") or ct_params.get("name") or ""
    maintype = content_type.partition("/")[0]
    container = part.is_multipart()
    attached = bool(filename) or disposition == "attachment"
    if container and not (attached and maintype == "message"):
        return
    charset = ct_params.get("charset")
    if not attached and maintype in ("text", "multipart", "message"):
        data = payload_bytes(part)
        if content_type == "text/html":
            data = data[:MAX_HTML_BYTES]  # what html_to_text reads of one part, as ever
        keep = max(content.body_left, 0)
        if len(data) > keep:
            content.body_left = -1  # extract() says so, once
            data = data[:keep]
        else:
            content.body_left -= len(data)
        if not data:
            return
        text = _text(data, charset)
        del data  # the part's bytes are not needed next to its text
        if content_type == "text/html":
            pieces.append(_Piece(html_to_text(text), group, html=True))
        else:
            pieces.append(_Piece(text, group))
        return
    stored = enclosed.get(index) if container else None
    if stored is not None:  # an attached message: no text of its own (its parts have it)
        size, sha256, text = stored.size, stored.sha256, ""
    else:
        try:
            data = content_bytes(part)
        except Exception as exc:  # an attached message nested too deep to write out
            data = b""
            content.defects.append(
                f"attachment: part {index} size and sha256 not known ({type(exc).__name__})"
            )
        size, sha256 = len(data), hashlib.sha256(data).hexdigest()
        text = ""
        if content.attachment_text_left > 0:
            text, limit = _attachment_text(content_type, filename, charset, data)
            if limit:  # a search of the attachment's words must not miss it without a word why
                cost = "cut short" if text.strip() else "not extracted"
                content.defects.append(f"attachment: part {index} text {cost}: {limit}")
            if len(text) > content.attachment_text_left:
                content.defects.append(
                    f"attachment: part {index} text cut short: the message's attachments gave "
                    f"{MAX_ATTACHMENTS_TEXT_CHARS} characters of text in all"
                )
            text = text[: content.attachment_text_left]
            content.attachment_text_left -= len(text)
        elif content_type.startswith("text/") or _is_pdf(content_type, filename, data):
            content.defects.append(
                f"attachment: part {index} text not extracted: the message's attachments gave "
                f"{MAX_ATTACHMENTS_TEXT_CHARS} characters of text in all"
            )
    content.attachments.append(
        Attachment(
            index=index,
            filename=filename,
            content_type=content_type,
            size=size,
            sha256=sha256,
            text=text,
        )
    )


class _AttachedMessages:
    """The attached messages of one message as stored, measured once, when first asked for."""

    def __init__(self, raw: bytes | None, tree: Message) -> None:
        self._raw, self._tree = raw, tree
        self._found: dict[int, Cut] | None = None

    def get(self, index: int) -> Cut | None:
        if self._raw is None:
            return None
        if self._found is None:
            self._found = enclosed_messages(self._raw, self._tree)
        return self._found.get(index)
