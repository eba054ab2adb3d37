"""Parse a very big message with bounded memory: the stdlib parser gets a skeleton of it.

``email``'s parser holds the whole message, several times over (the bytes, a str of them, each
part's payload, its decoded bytes): about 9x the message, 1.4 GB for a 150 MB message.  A
message bigger than ``WHOLE_MAX`` is therefore read as a stream, and the parser is given its
*skeleton*: every header line and every line that may be a MIME boundary, and of each part's
body only the first ``PART_KEEP`` bytes (and at most ``TOTAL_KEEP`` bytes of bodies in all).
What the index needs of a big attachment is its name, type, size and sha256, which are
computed here on the stream (the transfer encoding undone, as ``payload_bytes`` does) and put
back into the attachment records the parser made from the shortened parts.  Body text is cut
at ``PART_KEEP`` (the whole-message path cuts it at 16 MiB), with a defect saying so.

The skeleton is the message itself minus some body lines, so the parser finds the same tree;
parts are matched by their number in the depth-first walk (``mime.walk``) and their content
type, and a part that does not match keeps the parser's values, with a defect.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailvault.parse.model import ParsedMessage

WHOLE_MAX = 16 * 1024 * 1024  # bytes; bigger messages are parsed from their skeleton
PART_KEEP = 4 * 1024 * 1024  # body bytes of one part kept in the skeleton
TOTAL_KEEP = 16 * 1024 * 1024  # body bytes of all parts kept in the skeleton
HEADER_KEEP = 1024 * 1024  # header bytes of one part kept (a hostile header block)

_HEADERS = BytesHeaderParser(policy=compat32)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\r\n]")  # a space too: the stdlib tries strict first
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]")
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")  # email.feedparser's headerRE


_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})  # not decoded here


@dataclass(frozen=True)
class Cut:
    """A part whose body did not fit: what the whole part decodes to."""

    content_type: str
    size: int
    sha256: str
    exact: bool  # False: a transfer encoding this module does not decode (uuencode)


class _Decoder:
    """Transfer decoding of a part's body, line by line, for its size and sha256 only."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._carry = b""  # base64: characters short of a whole quantum
        # base64 with stray characters or data after padding: the stdlib decodes the whole
        # payload at once, where such input ends or shifts differently than in pieces
        self.clean = True
        self._padded = False
        self._length = 0  # base64 characters seen

    def feed(self, line: bytes) -> bytes:
        if self.encoding == "base64":
            if _NOT_BASE64.search(line) or (self._padded and _B64_DATA.search(line)):
                self.clean = False
            self._padded = self._padded or b"=" in line
            stripped = _WHITESPACE.sub(b"", line)
            self._length += len(stripped)
            data = self._carry + stripped
            whole = len(data) - len(data) % 4
            self._carry = data[whole:]
            return _b64(data[:whole])
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(line)
        return line

    def flush(self) -> bytes:
        if self._length % 4 == 1:  # undecodable: the stdlib then keeps the encoded text
            self.clean = False
        carry, self._carry = self._carry, b""
        return _b64(carry + b"=" * (-len(carry) % 4)) if carry else b""


def _b64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        return b""


@dataclass
class _Leaf:
    index: int
    content_type: str
    decoder: _Decoder
    kept: int = 0
    cut: bool = False
    size: int = 0
    hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    held: bytes | None = None  # the last line: its line end belongs to a delimiter after it
    blocks: int = 1  # message/delivery-status: the parser makes a part of each header block
    blank: bool = False  # the last line was blank
    sink: Callable[[bytes], object] | None = None  # where this part's content goes (show --part)

    def decode(self, data: bytes) -> None:
        self.took(self.decoder.feed(data))

    def took(self, decoded: bytes) -> None:
        self.size += len(decoded)
        self.hash.update(decoded)
        if self.sink is not None and decoded:
            self.sink(decoded)


class Skeleton:
    """Feed a message's bytes in chunks, then ``finish()``: the skeleton's bytes; ``cuts`` has
    the parts (by walk number) whose bodies were shortened, with what they really decode to."""

    def __init__(
        self, extract: int | None = None, sink: Callable[[bytes], object] | None = None
    ) -> None:
        """``extract``: the walk number of a part whose decoded content goes to ``sink`` as it
        streams by (``show --part N`` of a big message); ``extracted`` then says what it was."""
        self._extract, self._sink = extract, sink
        self.extracted: Cut | None = None
        self.out: list[bytes] = []
        self.cuts: dict[int, Cut] = {}
        self.size = 0
        self._tail = b""
        self._delimiters: list[bytes] = []  # of the open multiparts, innermost last
        self._digest: list[bool] = []  # each of them multipart/digest (parts default to messages)
        self._leaf: _Leaf | None = None
        self._header: list[bytes] | None = []  # collecting a header block (the top one first)
        self._header_bytes = 0
        self._next_index = 0
        self._body_kept = 0
        self._messages: list[tuple[int, int]] = []  # open message/* parts: (index, delimiters)
        self.cut_messages: set[int] = set()  # message/* parts with a shortened part inside

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        data = self._tail + chunk if self._tail else chunk
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            self._line(data[start : nl + 1])
            start = nl + 1
        self._tail = data[start:]
        if len(self._tail) > HEADER_KEEP:  # a line without end: take it as it comes
            line, self._tail = self._tail, b""
            self._line(line)

    def finish(self) -> bytes:
        if self._tail:
            self._line(self._tail)
            self._tail = b""
        # a part left open by a missing close delimiter loses its last line end too (as the
        # stdlib does it); a message that is not multipart keeps it
        self._end_leaf(at_delimiter=bool(self._delimiters))
        if self._header is not None:
            self.out.extend(self._header)
        return b"".join(self.out)

    # -- lines ----------------------------------------------------------------------------------
    def _line(self, line: bytes) -> None:
        if self._header is not None:
            if line in (b"\r\n", b"\n"):
                self._header.append(line)
                self._open_part()
            elif not self._header and line.startswith(b"--") and self._is_delimiter(line):
                self._delimiter(line)  # a delimiter right after one: no part (as the stdlib)
            elif _HEADER_LINE.match(line):
                if self._header_bytes < HEADER_KEEP:
                    self._header.append(line)
                    self._header_bytes += len(line)
            else:  # not a header line: the header block ends, and this line is body (as the
                self._open_part()  # stdlib parser reads it: MissingHeaderBodySeparator)
                if self._leaf is not None:  # where the stdlib's recovery varies: not exact
                    self._leaf.decoder.clean = False
                self._line(line)
        elif not (line.startswith(b"--") and self._delimiter(line)):
            self._body_line(line)

    def _open_part(self) -> None:
        assert self._header is not None
        block = b"".join(self._header)
        self.out.extend(self._header)
        self._header, self._header_bytes = None, 0
        try:
            headers = _HEADERS.parsebytes(block)
            if self._digest and self._digest[-1] and headers.get("content-type") is None:
                headers.set_default_type("message/rfc822")  # RFC 2046 5.1.5, as the stdlib
            content_type = headers.get_content_type()
            boundary = headers.get_boundary()
            # exactly as Message.get_payload(decode=True) reads it ("base64 " is not base64)
            encoding = str(headers.get("content-transfer-encoding", "")).lower()
        except Exception:
            content_type, boundary, encoding = "text/plain", None, ""
        index, self._next_index = self._next_index, self._next_index + 1
        maintype = content_type.partition("/")[0]
        if maintype == "multipart" and boundary is not None:
            self._delimiters.append(b"--" + boundary.encode("utf-8", "surrogateescape"))
            self._digest.append(content_type == "multipart/digest")
        elif maintype == "message" and content_type != "message/delivery-status":
            self._header = []  # the enclosed message's own header block follows
            self._messages.append((index, len(self._delimiters)))
        else:
            sink = self._sink if index == self._extract else None
            self._leaf = _Leaf(index, content_type, _Decoder(encoding), sink=sink)

    def _is_delimiter(self, line: bytes) -> bool:
        """A delimiter (not a close delimiter) of an open multipart."""
        return line.rstrip(b" \t\r\n") in self._delimiters

    def _delimiter(self, line: bytes) -> bool:
        """A delimiter of an open multipart: the part before it ends, a new one may start."""
        text = line.rstrip(b" \t\r\n")
        for depth in range(len(self._delimiters) - 1, -1, -1):
            delimiter = self._delimiters[depth]
            if text == delimiter or text == delimiter + b"--":
                self._end_leaf(at_delimiter=True)
                del self._delimiters[depth + (text == delimiter) :]
                del self._digest[depth + (text == delimiter) :]
                # the enclosed messages inside the part this delimiter ends are over too
                self._messages = [m for m in self._messages if m[1] <= depth]
                self.out.append(line)
                if text == delimiter:
                    self._header = []
                return True
        return False

    def _body_line(self, line: bytes) -> None:
        leaf = self._leaf
        within = self._body_kept + len(line) <= TOTAL_KEEP and (
            leaf is None or (not leaf.cut and leaf.kept + len(line) <= PART_KEEP)
        )
        if within or line.startswith(b"--"):  # a line that may be a delimiter always stays
            self.out.append(line)
            self._body_kept += len(line)
            if leaf is not None:
                leaf.kept += len(line)
        if leaf is None:  # a preamble or an epilogue
            return
        leaf.cut = leaf.cut or not within
        if leaf.content_type == "message/delivery-status":
            leaf.blocks += leaf.blank  # a blank line with more after it starts a block
            leaf.blank = line in (b"\r\n", b"\n")
        if leaf.held is not None:
            leaf.decode(leaf.held)
        leaf.held = line

    def _end_leaf(self, *, at_delimiter: bool) -> None:
        leaf, self._leaf = self._leaf, None
        if leaf is None:
            return
        if leaf.content_type == "message/delivery-status":
            self._next_index += leaf.blocks
        if leaf.held is not None:  # its line end belongs to the delimiter (RFC 2046 5.1.1)
            leaf.decode(
                leaf.held.removesuffix(b"\n").removesuffix(b"\r") if at_delimiter else leaf.held
            )
        leaf.took(leaf.decoder.flush())
        if leaf.index == self._extract:
            exact = leaf.decoder.encoding not in _UUENCODE and leaf.decoder.clean
            self.extracted = Cut(leaf.content_type, leaf.size, leaf.hash.hexdigest(), exact)
        if leaf.cut:
            self.cut_messages.update(index for index, _ in self._messages)
            exact = leaf.decoder.encoding not in _UUENCODE and leaf.decoder.clean
            self.cuts[leaf.index] = Cut(leaf.content_type, leaf.size, leaf.hash.hexdigest(), exact)


def parse_chunks(chunks: Iterable[bytes], sha256: str, *, ingest_time: datetime) -> ParsedMessage:
    """``parse_message`` of the message in ``chunks``, holding at most about ``WHOLE_MAX`` of it
    (see the module docstring): a smaller message is parsed whole, exactly as before."""
    from mailvault.parse.message import parse_message

    stream: Iterator[bytes] = iter(chunks)
    buffered: list[bytes] = []
    size = 0
    for chunk in stream:
        buffered.append(chunk)
        size += len(chunk)
        if size > WHOLE_MAX:
            break
    else:
        return parse_message(b"".join(buffered), sha256, ingest_time=ingest_time)
    skeleton = Skeleton()
    failure: Exception | None = None
    try:
        for chunk in buffered:
            skeleton.feed(chunk)
    except Exception as exc:  # a bug here must not cost the message its index entry
        failure = exc
    for chunk in stream:  # read to the end in any case: errors reading the blob propagate
        size += len(chunk)
        if failure is None:
            try:
                skeleton.feed(chunk)
            except Exception as exc:
                failure = exc
    if failure is None:
        try:
            data = skeleton.finish()
            return restore(parse_message(data, sha256, ingest_time=ingest_time), skeleton, data)
        except Exception as exc:
            failure = exc
    # Never raise (parse_message's promise): the first WHOLE_MAX bytes, parsed whole.
    head = b"".join(buffered)[:WHOLE_MAX]
    parsed = parse_message(head, sha256, ingest_time=ingest_time)
    defect = f"parsed from its first {len(head)} bytes only ({type(failure).__name__})"
    return replace(parsed, size=size, defects=(*parsed.defects, defect))


def restore(parsed: ParsedMessage, skeleton: Skeleton, data: bytes) -> ParsedMessage:
    """What the whole message has that its skeleton lacks: its size, and the real size and
    sha256 of each shortened attachment."""
    defects = list(parsed.defects)
    attachments = []
    patched: set[int] = set()
    for attachment in parsed.attachments:
        cut = skeleton.cuts.get(attachment.index)
        if attachment.index in skeleton.cut_messages:  # an attached message, shortened inside
            defects.append(f"attachment: part {attachment.index} size and sha256 not known")
        elif cut is not None and cut.exact and cut.content_type == attachment.content_type:
            attachment = replace(attachment, size=cut.size, sha256=cut.sha256)
            patched.add(attachment.index)
            defects.append(  # a PDF cut short gives no text, a text file only its start
                f"attachment: part {attachment.index} text taken from its first "
                f"{PART_KEEP} bytes (a big message)"
            )
        elif cut is not None:
            defects.append(f"attachment: part {attachment.index} size and sha256 not known")
            patched.add(attachment.index)
        attachments.append(attachment)
    bodies = sorted(set(skeleton.cuts) - patched)
    if bodies:
        parts = ", ".join(map(str, bodies[:10])) + (", ..." if len(bodies) > 10 else "")
        defects.append(f"body: part {parts} text cut at {PART_KEEP} bytes (a big message)")
    return replace(
        parsed,
        size=skeleton.size,
        attachments=tuple(attachments),
        defects=tuple(dict.fromkeys(defects)),
    )
