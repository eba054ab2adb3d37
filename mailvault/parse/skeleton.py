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
import contextlib
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailvault.parse.mime import OBS_COLON, fix_obsolete_colons, parse_bytes
from mailvault.parse.model import ParsedMessage

# bytes; bigger messages are parsed from their skeleton.  8 MiB keeps a parse under 150 MB
# (at about 9x, a 16 MiB message took 200 MB, over fetch's memory target)
WHOLE_MAX = 8 * 1024 * 1024
PART_KEEP = 4 * 1024 * 1024  # body bytes of one part kept in the skeleton
TOTAL_KEEP = 8 * 1024 * 1024  # body bytes of all parts kept in the skeleton
HEADER_KEEP = 1024 * 1024  # header bytes of one part kept (a hostile header block)

_HEADERS = BytesHeaderParser(policy=compat32)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\r\n]")  # a space too: the stdlib tries strict first
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]")
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")  # email.feedparser's headerRE
_NEWLINE = re.compile(rb"\r\n|\r|\n")  # the stdlib's line ends (feedparser's NLCRE_crack)
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_JUNK_LINE = re.compile(rb"[ \t]+\r?\n")  # what mime.leading_junk skips, after a BOM
# Fields kept past HEADER_KEEP: what the parser and the index read.  A megabyte of Received
# lines must not push the Subject out of the skeleton.
_NEEDED = frozenset(
    b"content-type content-transfer-encoding content-disposition mime-version subject from "
    b"to cc bcc date message-id in-reply-to references reply-to sender list-id".split()
)
_TOTAL_HEADERS = 8 * 1024 * 1024  # header bytes of all parts kept before only _NEEDED ones
_MAX_ENCLOSED = 64  # nested message/* parts followed; deeper ones are read as plain bodies

_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_MESSAGE_ENCODINGS = frozenset({"base64", "quoted-printable"})  # undone in a message/* part


@dataclass(frozen=True)
class Cut:
    """A part whose body did not fit: what the whole part decodes to."""

    content_type: str
    size: int
    sha256: str
    exact: bool  # False: decoded here otherwise than the stdlib would (see _Decoder.clean)
    kept: str = ""  # sha256 of the part's raw body as the skeleton keeps it (for the check)


class _Decoder:
    """Transfer decoding of a part's body, line by line, for its size and sha256 only."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._carry = b""  # base64: characters short of a whole quantum
        # base64 the stdlib would not decode strictly (stray characters, padding not at the
        # very end, a length it cannot pad): it then decodes it in ways that differ from
        # decoding in pieces, or keeps the text as it is
        self.clean = True
        self._padded = False
        self._length = 0  # base64 characters seen
        # uuencode, as email.message._decode_uu reads it; if that fails the stdlib gives the
        # raw text, so its size and hash are kept too
        self._uu = "seek"  # seek (the begin line) | data | done | failed
        self.raw_size = 0
        self.raw_hash = hashlib.sha256()

    def feed(self, line: bytes) -> bytes:
        if self.encoding == "base64":
            stripped = _WHITESPACE.sub(b"", line)
            if (
                _NOT_BASE64.search(stripped)
                or (self._padded and _B64_DATA.search(stripped))
                or (b"=" in stripped and _B64_DATA.search(stripped[stripped.index(b"=") :]))
            ):
                self.clean = False
            self._padded = self._padded or b"=" in stripped
            self._length += len(stripped)
            data = self._carry + stripped
            whole = len(data) - len(data) % 4
            self._carry = data[whole:]
            return _b64(data[:whole])
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(line)
        if self.encoding in _UUENCODE:
            return self._uudecode(line)
        return line

    def _uudecode(self, line: bytes) -> bytes:
        self.raw_size += len(line)
        self.raw_hash.update(line)
        text = _chomp(line)
        if self._uu == "seek":
            if text.startswith(b"begin "):
                with contextlib.suppress(ValueError):
                    int(text[6:].partition(b" ")[0], 8)
                    self._uu = "data"
            return b""
        if self._uu != "data":
            return b""
        if not text:
            self._uu = "failed"  # "Truncated input"
            return b""
        if text.strip(b" \t\r\n\f") == b"end":
            self._uu = "done"
            return b""
        try:
            return binascii.a2b_uu(text)
        except binascii.Error:
            try:  # the stdlib's workaround for broken encoders
                return binascii.a2b_uu(text[: (((text[0] - 32) & 63) * 4 + 5) // 3])
            except binascii.Error:
                self._uu = "failed"
                return b""

    @property
    def uu_failed(self) -> bool:
        """uuencode the stdlib could not decode: it gives the raw text instead."""
        return self.encoding in _UUENCODE and self._uu in ("seek", "failed")

    def flush(self) -> bytes:
        if self.encoding == "base64" and (
            self._length % 4 == 1 or (self._padded and self._length % 4)
        ):
            self.clean = False  # the stdlib keeps the encoded text, or decodes it otherwise
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
    kept_hash: hashlib._Hash = field(default_factory=hashlib.sha256)  # raw body as kept
    kept_held: bytes | None = None
    sink: Callable[[bytes], object] | None = None  # where this part's content goes (show --part)

    def decode(self, data: bytes) -> None:
        self.took(self.decoder.feed(data))

    def took(self, decoded: bytes) -> None:
        self.size += len(decoded)
        self.hash.update(decoded)
        if self.sink is not None and decoded:
            self.sink(decoded)


@dataclass
class _Enclosed:
    """A message/* part being read: its body, the enclosed message's bytes as they are stored
    (a transfer encoding, which RFC 2046 forbids there but some mailers use, undone)."""

    index: int
    content_type: str
    depth: int  # multiparts open around it: a delimiter of one of them ends it
    decoder: _Decoder
    sink: Callable[[bytes], object] | None = None
    size: int = 0
    hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    held: bytes | None = None  # the last piece: its line end may belong to a delimiter
    open: bool = True

    def take(self, data: bytes) -> None:
        if self.held is not None:
            self._out(self.decoder.feed(self.held))
        self.held = data

    def _out(self, data: bytes) -> None:
        if data:
            self.size += len(data)
            self.hash.update(data)
            if self.sink is not None:
                self.sink(data)

    def close(self, *, at_delimiter: bool) -> Cut:
        self.open = False
        if self.held is not None:
            self._out(self.decoder.feed(_chomp(self.held) if at_delimiter else self.held))
            self.held = None
        self._out(self.decoder.flush())
        return Cut(self.content_type, self.size, self.hash.hexdigest(), self.decoder.clean)


class Skeleton:
    """Feed a message's bytes in chunks, then ``finish()``: the skeleton's bytes; ``cuts`` has
    the parts (by walk number) whose bodies were shortened, with what they really decode to.
    ``verify(tree)`` then checks the parser found each of those parts where this walk did."""

    def __init__(
        self,
        extract: int | None = None,
        sink: Callable[[bytes], object] | None = None,
        *,
        enclosed: bool = False,
    ) -> None:
        """``extract``: the walk number of a part whose decoded content goes to ``sink`` as it
        streams by (``show --part N`` of a big message); ``extracted`` then says what it was.
        ``enclosed``: measure every message/* part's content (see ``_Enclosed``) into
        ``self.enclosed``; an extracted message/* part is measured in any case."""
        self._extract, self._sink = extract, sink
        self._measure_enclosed = enclosed
        self.extracted: Cut | None = None
        self.enclosed: dict[int, Cut] = {}
        self._captures: list[_Enclosed] = []  # the message/* parts being read, outermost first
        self.out: list[bytes] = []
        self.cuts: dict[int, Cut] = {}
        self.size = 0
        self._tail = b""
        self._mid_line = False  # the next bytes continue a line already passed on in pieces
        # the open multiparts, innermost last: (delimiter, multipart/digest: parts default to
        # messages)
        self._open: list[tuple[bytes, bool]] = []
        self._declared: set[bytes] = set()  # every delimiter declared: such lines always stay
        self._leaf: _Leaf | None = None
        self._header: list[bytes] | None = []  # collecting a header block (the top one first)
        self._header_bytes = 0
        self._headers_total = 0
        self._field_needed = True  # the header line being read belongs to a needed field
        self._top = True  # still in the message's own header block (obsolete colons allowed)
        self._junk = True  # nothing but leading junk seen yet
        self._enclosed = False  # the header block being read is an enclosed message's
        self._next_index = 0
        self._body_kept = 0
        self._messages: list[tuple[int, int]] = []  # open message/* parts: (index, delimiters)
        self.cut_messages: set[int] = set()  # message/* parts with a shortened part inside
        self.unreliable = False  # a structure whose numbering this walk does not follow
        self.undecoded: set[int] = set()  # uuencoded parts the stdlib keeps as raw text

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        data = self._tail + chunk if self._tail else chunk
        start, end = 0, len(data)
        while start < end:
            if self._bulk_ok() and not data.startswith(b"--", start):
                stop = _lines_before_dashes(data, start)
                if stop > start:
                    self._bulk(data[start:stop])
                    start = stop
                    continue
            match = _NEWLINE.search(data, start)
            if match is None or (match.group() == b"\r" and match.end() == end):
                break  # no line end yet, or a CR at the end of the chunk: a LF may follow
            self._piece(data[start : match.end()], ends_line=True)
            start = match.end()
        self._tail = data[start:]
        if len(self._tail) > HEADER_KEEP:  # a line without end: take it in pieces
            piece, self._tail = self._tail, b""
            self._piece(piece, ends_line=False)

    def _bulk_ok(self) -> bool:
        """Past its budget, a part's lines are only decoded: lines that cannot be delimiters
        (not starting with "--") go in one block instead of one call each."""
        leaf = self._leaf
        return (
            self._header is None
            and leaf is not None
            and leaf.cut
            and not self._mid_line
            and leaf.decoder.encoding not in _UUENCODE
        )

    def _bulk(self, block: bytes) -> None:
        """Whole lines of a part past its budget, none starting with "--": as _body_line would
        take them one by one (none kept; each decoded once the next one shows it is content)."""
        leaf = self._leaf
        assert leaf is not None
        eol = 2 if block.endswith(b"\r\n") else 1
        last = max(block.rfind(b"\n", 0, len(block) - eol), block.rfind(b"\r", 0, len(block) - eol))
        if leaf.held is not None:
            leaf.decode(leaf.held)
        if last >= 0:
            leaf.decode(block[: last + 1])
        leaf.held = block[last + 1 :]
        for capture in self._captures:
            capture.take(block)

    def _piece(self, piece: bytes, *, ends_line: bool) -> None:
        # the message/* parts this piece may belong to: not one that begins after it (a blank
        # line ends the part's header block), nor one a delimiter in it ends
        reading = tuple(self._captures) if self._captures else ()
        at_start, self._mid_line = not self._mid_line, not ends_line
        if at_start:
            self._line(piece)
        elif self._header is None:
            self._body_line(piece)
        elif self._header_bytes < HEADER_KEEP:  # the rest of an over-long header line
            self._header.append(piece)
            self._header_bytes += len(piece)
        for capture in reading:
            if capture.open:
                capture.take(piece)

    def finish(self) -> bytes:
        if self._tail:
            self._piece(self._tail, ends_line=True)
            self._tail = b""
        # a part left open by a missing close delimiter loses its last line end too (as the
        # stdlib does it); a message that is not multipart keeps it
        self._end_leaf(at_delimiter=bool(self._open))
        # one inside a multipart that never closed loses its last line end, as a leaf does
        self._end_enclosed(lambda capture: True, at_delimiter=bool(self._open))
        if self._header is not None:
            self.out.extend(self._header)
        return b"".join(self.out)

    # -- lines ----------------------------------------------------------------------------------
    def _line(self, line: bytes) -> None:
        if self._header is None:
            if not self._delimiter(line):
                self._body_line(line)
            return
        header = self._header
        if self._junk:  # a BOM and space-only lines before the first header (as
            if not self.out and line.startswith(b"\xef\xbb\xbf"):  # mime.parse_tree skips)
                self.out.append(line[:3])
                line = line[3:]
            if _JUNK_LINE.fullmatch(line):
                self.out.append(line)
                return
            self._junk = False
        if line in (b"\r\n", b"\n", b"\r"):
            header.append(line)
            self._open_part()
        elif (depth := self._delimiter_depth(line)) is not None:
            if header:  # the part's headers end at a delimiter (no blank line before it)
                self._open_part()
                self._line(line)
            elif line.rstrip(b" \t\r\n").endswith(b"--") and depth == len(self._open) - 1:
                # "--B" then "--B--": the stdlib reads what follows as that part
                self.out.append(line)
                self._open.pop()
            else:
                self._delimiter(line)  # a delimiter right after one: no part (as the stdlib)
        elif _HEADER_LINE.match(line) or (self._top and OBS_COLON.match(line)):
            self._header_line(line)
        else:  # not a header line: the header block ends, and this line is body (as the
            reading = len(self._captures)  # stdlib parser reads it: MissingHeaderBodySeparator)
            self._open_part()
            if self._leaf is not None:  # where the stdlib's recovery varies: not exact
                self._leaf.decoder.clean = False
            for capture in self._captures[reading:]:  # a message/* part that begins here
                capture.take(line)
            self._line(line)

    def _header_line(self, line: bytes) -> None:
        assert self._header is not None
        if line[:1] not in (b" ", b"\t"):
            name = _FIELD.match(line)
            self._field_needed = name is not None and name.group(1).lower() in _NEEDED
        over = self._header_bytes >= HEADER_KEEP or self._headers_total >= _TOTAL_HEADERS
        if not over or (self._field_needed and self._header_bytes < 4 * HEADER_KEEP):
            self._header.append(line)
            self._header_bytes += len(line)
            self._headers_total += len(line)

    def _open_part(self) -> None:
        assert self._header is not None
        block = b"".join(self._header)
        self.out.extend(self._header)
        enclosed, top, self._enclosed, self._top = self._enclosed, self._top, False, False
        self._header, self._header_bytes = None, 0
        if top:  # as mime.parse_tree repairs it: "Subject  :" is a header line there
            block = fix_obsolete_colons(block) or block
        try:
            headers = _HEADERS.parsebytes(block)
            if not enclosed and self._open and self._open[-1][1] and "content-type" not in headers:
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
            try:  # the stdlib compares the boundary with lines read as ASCII: a non-ASCII
                # one (RFC 2231 decoded) never matches
                delimiter = b"--" + boundary.encode("ascii", "surrogateescape")
            except UnicodeEncodeError:
                delimiter = b"\n"  # matches no line
            self._open.append((delimiter, content_type == "multipart/digest"))
            self._declared.add(delimiter)
        elif (
            maintype == "message"
            and content_type != "message/delivery-status"
            and len(self._messages) < _MAX_ENCLOSED
        ):
            self._header = []  # the enclosed message's own header block follows
            self._enclosed = True
            self._messages.append((index, len(self._open)))
            if self._measure_enclosed or index == self._extract:
                decoder = _Decoder(encoding if encoding in _MESSAGE_ENCODINGS else "")
                sink = self._sink if index == self._extract else None
                self._captures.append(
                    _Enclosed(index, content_type, len(self._open), decoder, sink)
                )
        else:
            if maintype == "message":  # delivery-status: the stdlib numbers its blocks
                self.unreliable = True
            sink = self._sink if index == self._extract else None
            decoder = _Decoder(encoding)
            self._leaf = _Leaf(index, content_type, decoder, sink=sink)

    def _delimiter_depth(self, line: bytes) -> int | None:
        """The depth of the open multipart a delimiter line belongs to: the outermost that
        matches (the stdlib's end-of-part matchers of outer parts see a line first)."""
        if not line.startswith(b"--"):
            return None
        text = line.rstrip(b" \t\r\n")
        for depth, (delimiter, _) in enumerate(self._open):
            if text == delimiter or text == delimiter + b"--":
                return depth
        return None

    def _delimiter(self, line: bytes) -> bool:
        """A delimiter of an open multipart: the part before it ends, a new one may start."""
        depth = self._delimiter_depth(line)
        if depth is None:
            return False
        closing = line.rstrip(b" \t\r\n") != self._open[depth][0]
        self._end_leaf(at_delimiter=True)
        if self._captures:
            self._end_enclosed(lambda capture: capture.depth > depth, at_delimiter=True)
        del self._open[depth + (not closing) :]
        # the enclosed messages inside the part this delimiter ends are over too
        self._messages = [m for m in self._messages if m[1] <= depth]
        self.out.append(line)
        if not closing:
            self._header = []
            self._enclosed = False
        return True

    def _body_line(self, line: bytes) -> None:
        leaf = self._leaf
        within = self._body_kept + len(line) <= TOTAL_KEEP and (
            leaf is None or (not leaf.cut and leaf.kept + len(line) <= PART_KEEP)
        )
        keep = within or (
            line.startswith(b"--") and line.rstrip(b" \t\r\n").removesuffix(b"--") in self._declared
        )
        if keep:
            self.out.append(line)
            self._body_kept += len(line)
            if leaf is not None:
                leaf.kept += len(line)
                if leaf.kept_held is not None:
                    leaf.kept_hash.update(leaf.kept_held)
                leaf.kept_held = line
        if leaf is None:  # a preamble or an epilogue
            return
        leaf.cut = leaf.cut or not within
        if leaf.held is not None:
            leaf.decode(leaf.held)
        leaf.held = line

    def _end_leaf(self, *, at_delimiter: bool) -> None:
        leaf, self._leaf = self._leaf, None
        if leaf is None:
            return
        if leaf.held is not None:  # its line end belongs to the delimiter (RFC 2046 5.1.1)
            leaf.decode(_chomp(leaf.held) if at_delimiter else leaf.held)
        if leaf.kept_held is not None:
            leaf.kept_hash.update(_chomp(leaf.kept_held) if at_delimiter else leaf.kept_held)
        leaf.took(leaf.decoder.flush())
        size, digest = leaf.size, leaf.hash.hexdigest()
        if leaf.decoder.uu_failed:  # the stdlib's answer is the raw text; what streamed is not
            size, digest = leaf.decoder.raw_size, leaf.decoder.raw_hash.hexdigest()
            self.undecoded.add(leaf.index)
        result = Cut(
            leaf.content_type, size, digest, leaf.decoder.clean, leaf.kept_hash.hexdigest()
        )
        if leaf.index == self._extract:
            self.extracted = result
        if leaf.cut:
            self.cut_messages.update(index for index, _ in self._messages)
            self.cuts[leaf.index] = result

    def _end_enclosed(self, ends: Callable[[_Enclosed], bool], *, at_delimiter: bool) -> None:
        for capture in [c for c in self._captures if ends(c)]:
            self._captures.remove(capture)
            result = capture.close(at_delimiter=at_delimiter)
            self.enclosed[capture.index] = result
            if capture.index == self._extract:
                self.extracted = result

    def verify(self, tree: Message) -> set[int]:
        """The shortened (or extracted) parts the parser finds in the skeleton's ``tree``
        exactly where this walk put them: same number, same type, the same body bytes; and
        the measured message/* parts, where it finds as many parts in all as this walk."""
        from mailvault.parse.mime import walk

        wanted = dict(self.cuts)
        if self.extracted is not None and self._extract is not None:
            wanted[self._extract] = self.extracted
        if not (wanted or self.enclosed) or self.unreliable:
            return set()
        good = set()
        messages = set()  # message/* parts of the right type: if the numbering agrees
        count = 0
        for index, _depth, part in walk(tree):
            count += 1
            enclosed = self.enclosed.get(index)
            if enclosed is not None:
                if part.get_content_maintype() == "message" and (
                    part.get_content_type() == enclosed.content_type
                ):
                    messages.add(index)
                continue
            cut = wanted.get(index)
            if cut is None or part.is_multipart() or part.get_content_type() != cut.content_type:
                continue
            # the raw payload: get_payload() would decode 8-bit text by its charset
            payload = getattr(part, "_payload", None)
            if not isinstance(payload, str):
                continue
            try:
                body = payload.encode("ascii", "surrogateescape")
            except UnicodeEncodeError:
                continue
            if hashlib.sha256(body).hexdigest() == cut.kept:
                good.add(index)
        if count == self._next_index:  # the parser found as many parts as this walk
            good |= messages
        return good


def enclosed_messages(
    raw: bytes,
    tree: Message,
    extract: int | None = None,
    sink: Callable[[bytes], object] | None = None,
) -> dict[int, Cut]:
    """What each message/* part of a message held whole contains, as stored: the enclosed
    message's bytes (see ``_Enclosed``), for the parts the parser (``tree``) numbers as this
    walk does.  ``extract``/``sink`` as for ``Skeleton``: ``sink`` sees bytes before they are
    checked, so collect them and use them only if ``extract`` is in the answer."""
    walker = Skeleton(extract, sink, enclosed=True)
    walker.feed(raw)
    walker.finish()
    good = walker.verify(tree)
    return {index: cut for index, cut in walker.enclosed.items() if index in good}


def _lines_before_dashes(data: bytes, start: int) -> int:
    """The end of the whole lines from ``start`` up to the first line starting with "--" (or
    to the last line end, except a CR that may be half of a CRLF)."""
    found = [at + 1 for at in (data.find(b"\n--", start), data.find(b"\r--", start)) if at >= 0]
    if found:
        return min(found)
    last = max(data.rfind(b"\n", start), data.rfind(b"\r", start, len(data) - 1))
    return last + 1 if last >= start else start


def _chomp(line: bytes) -> bytes:
    for end in (b"\r\n", b"\n", b"\r"):
        if line.endswith(end):
            return line[: -len(end)]
    return line


def read_head(chunks: Iterable[bytes]) -> tuple[list[bytes], Iterator[bytes] | None]:
    """A message's first chunks, up to just past ``WHOLE_MAX``, and an iterator of the rest;
    None instead of it when the whole message is in the head (then parse it whole)."""
    stream = iter(chunks)
    head: list[bytes] = []
    size = 0
    for chunk in stream:
        head.append(chunk)
        size += len(chunk)
        if size > WHOLE_MAX:
            return head, stream
    return head, None


def parse_chunks(
    chunks: Iterable[bytes], sha256: str, *, ingest_time: datetime, body_limit: int | None = None
) -> ParsedMessage:
    """``parse_message`` of the message in ``chunks``, holding at most about ``WHOLE_MAX`` of it
    (see the module docstring): a smaller message is parsed whole, exactly as before.
    ``body_limit``: ``parse_message``'s (None: its default)."""
    from functools import partial

    from mailvault.parse.content import MAX_BODY_TEXT_BYTES
    from mailvault.parse.message import parse_message

    limit = MAX_BODY_TEXT_BYTES if body_limit is None else body_limit
    parse = partial(parse_message, ingest_time=ingest_time, body_limit=limit)
    buffered, stream = read_head(chunks)
    if stream is None:
        whole = b"".join(buffered)
        buffered.clear()  # not held twice while it is parsed
        return parse(whole, sha256)
    size = sum(map(len, buffered))
    skeleton = Skeleton(enclosed=True)
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
            return restore(parse(data, sha256), skeleton, data)
        except Exception as exc:
            failure = exc
    # Never raise (parse_message's promise): the first WHOLE_MAX bytes, parsed whole.
    head = b"".join(buffered)[:WHOLE_MAX]
    parsed = parse(head, sha256)
    defect = f"parsed from its first {len(head)} bytes only ({type(failure).__name__})"
    return replace(parsed, size=size, defects=(*parsed.defects, defect))


def restore(parsed: ParsedMessage, skeleton: Skeleton, data: bytes) -> ParsedMessage:
    """What the whole message has that its skeleton lacks: its size, and the real size and
    sha256 of each shortened attachment."""
    defects = list(parsed.defects)
    attachments = []
    patched: set[int] = set()
    # where the parser agrees (it parses the skeleton again: parse_message keeps no tree)
    found = skeleton.verify(parse_bytes(data)) if skeleton.cuts or skeleton.enclosed else set()
    # Parts the parser numbers otherwise than this walk: from the first shortened part on,
    # no attachment's size can be vouched for.
    doubtful = min(skeleton.cuts) if set(skeleton.cuts) - found else None
    for attachment in parsed.attachments:
        cut = skeleton.cuts.get(attachment.index)
        stored = skeleton.enclosed.get(attachment.index)
        if stored is not None and attachment.index in found:  # an attached message, measured
            attachment = replace(attachment, size=stored.size, sha256=stored.sha256)
            patched.add(attachment.index)
        elif attachment.index in skeleton.cut_messages:  # an attached message, shortened inside
            defects.append(f"attachment: part {attachment.index} size and sha256 not known")
        elif cut is not None and cut.exact and attachment.index in found:  # verify checked type
            attachment = replace(attachment, size=cut.size, sha256=cut.sha256)
            patched.add(attachment.index)
            defects.append(  # a PDF cut short gives no text, a text file only its start
                f"attachment: part {attachment.index} text taken from its first "
                f"{PART_KEEP} bytes (a big message)"
            )
        elif cut is not None or (doubtful is not None and attachment.index >= doubtful):
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
