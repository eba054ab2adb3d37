"""Big messages are parsed from a skeleton (mailvault/parse/skeleton.py) with bounded memory.

Three promises: the skeleton of a message that fits is the message itself, byte for byte; a
shortened part's attachment record gets the size and sha256 the whole message gives (or a
defect says it could not); and a real big message goes through import, index and show in tens
of MB, not the ~9x its size the stdlib parser takes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailvault.parse import parse_message
from mailvault.parse import skeleton as sk
from mailvault.testkit.generator import generate
from tests.prereq import corpora_dir
from tests.test_export_kit import new_vault

INGEST = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, bytes]]:
    """Every corpus file under 3 MB, and generated mail with attachments."""
    found = []
    manifest = corpora_dir() / "MANIFEST.tsv"
    for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
        path, _sha256, size, _set = line.split("\t")
        if int(size) < 3_000_000:
            found.append((path, (corpora_dir() / path).read_bytes()))
    found += [(f"generated {i}", m.raw) for i, m in enumerate(generate(150, seed=11))]
    return found


def _skeleton(raw: bytes, step: int) -> sk.Skeleton:
    skeleton = sk.Skeleton()
    for at in range(0, len(raw), step):
        skeleton.feed(raw[at : at + step])
    return skeleton


def test_the_skeleton_of_a_message_that_fits_is_the_message(
    messages: list[tuple[str, bytes]],
) -> None:
    for step in (1 << 20, 4099, 97):
        for name, raw in messages:
            skeleton = _skeleton(raw, step)
            assert skeleton.finish() == raw, (name, step)
            assert not skeleton.cuts and skeleton.size == len(raw)


@pytest.fixture
def tiny_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message takes the skeleton path, and most of its parts are shortened."""
    monkeypatch.setattr(sk, "WHOLE_MAX", 0)
    monkeypatch.setattr(sk, "PART_KEEP", 1024)
    monkeypatch.setattr(sk, "TOTAL_KEEP", 4096)


@pytest.mark.usefixtures("tiny_budgets")
def test_shortened_parts_keep_their_real_size_and_sha256(
    messages: list[tuple[str, bytes]],
) -> None:
    """Every message parsed from a skeleton with tiny budgets: each attachment record equals
    the one the whole message gives, or a defect names its part; headers are untouched."""
    shortened = said = 0
    for name, raw in messages:
        digest = hashlib.sha256(raw).hexdigest()
        whole = parse_message(raw, digest, ingest_time=INGEST)
        chunks = [raw[at : at + 5000] for at in range(0, len(raw), 5000)]
        part = sk.parse_chunks(chunks, digest, ingest_time=INGEST)
        assert (part.size, part.subject, part.from_, part.date, part.message_id) == (
            whole.size,
            whole.subject,
            whole.from_,
            whole.date,
            whole.message_id,
        ), name
        assert len(part.attachments) == len(whole.attachments), name
        for mine, theirs in zip(part.attachments, whole.attachments, strict=True):
            unknown = f"attachment: part {mine.index} size and sha256 not known"
            short = f"attachment: part {mine.index} text taken from its first"
            assert replace(mine, text="") == replace(theirs, text="") or (
                unknown in part.defects and mine.filename == theirs.filename
            ), (name, mine.index)
            assert (
                mine.text == theirs.text
                or unknown in part.defects
                or any(d.startswith(short) for d in part.defects)
            ), (name, mine.index)
            shortened += theirs.size > 1024  # more than a part keeps: it was shortened
            said += any(d.startswith(short) for d in part.defects)  # and the parse says so
    assert len(messages) > 1500 and shortened > 100 and said > 100


def _big_message(path: Path, payload: bytes) -> None:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    path.write_bytes(
        b"From: big@example.com\r\nTo: x@example.com\r\nSubject: the big one\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain\r\n\r\nsee the attached measurements\r\n--B\r\n"
        b"Content-Type: application/octet-stream; name=big.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--B--\r\n"
    )


_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _max_rss_mib(argv: list[str]) -> float:
    """Peak RSS of a command, which must succeed (in MiB).  Run from a small Python: a child
    forked from pytest itself starts with pytest's pages resident, which ru_maxrss counts."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True
    )
    code, peak = result.stdout.split()[-2:]
    assert code == "0", result.stderr
    return int(peak) / 1024


def test_a_big_message_is_imported_indexed_and_shown_in_bounded_memory(tmp_path: Path) -> None:
    """60 MB of base64 attachment: the stdlib parser alone would take about half a GB."""
    payload = os.urandom(44 * 1024 * 1024)
    eml = tmp_path / "big.eml"
    _big_message(eml, payload)
    vault = new_vault(tmp_path / "vault")
    mailvault = [sys.executable, "-m", "mailvault", "--vault", str(vault)]
    peak = _max_rss_mib([*mailvault, "import", str(eml)])
    assert peak < 150, f"import peaked at {peak:.0f} MiB"  # issue 2: under 150 MB
    digest = hashlib.sha256(eml.read_bytes()).hexdigest()
    result = subprocess.run([*mailvault, "show", "--json", digest], capture_output=True)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["size"] == eml.stat().st_size and shown["subject"] == "the big one"
    (attachment,) = shown["attachments"]
    assert attachment["size"] == len(payload)
    assert attachment["sha256"] == hashlib.sha256(payload).hexdigest()
    hits = subprocess.run([*mailvault, "search", "--count", "measurements"], capture_output=True)
    assert hits.stdout.strip() == b"1"
    # the investigator takes the attachment out: streamed, exact
    saved = tmp_path / "big.bin"
    peak = _max_rss_mib([*mailvault, "show", digest, "--part", "2", "--out", str(saved)])
    assert peak < 150, f"show --part peaked at {peak:.0f} MiB"
    assert saved.read_bytes() == payload
    result = subprocess.run([*mailvault, "show", digest, "--part", "1"], capture_output=True)
    assert result.returncode == 0 and result.stdout == b"see the attached measurements"
    result = subprocess.run([*mailvault, "show", digest, "--part", "0"], capture_output=True)
    assert result.returncode == 2 and b"multipart container" in result.stderr
    result = subprocess.run([*mailvault, "show", digest, "--part", "9"], capture_output=True)
    assert result.returncode == 2 and b"there is no part 9" in result.stderr


def test_big_text_messages_are_imported_and_indexed_under_150_mib(tmp_path: Path) -> None:
    """Issue 2's memory target with indexing: eight 8 MB text messages took 170-210 MB (the
    stdlib parser's copies of each, and Tantivy's unbounded queue of added documents)."""
    words = [f"{a}{b}{c}" for a in "bcdfgk" for b in "aeiou" for c in "lmnprstvz"]
    line = (" ".join(words[(i * 7) % len(words)] for i in range(12)) + "\r\n").encode()
    body = line * (8_000_000 // len(line))
    maildir = tmp_path / "maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n in range(8):
        (maildir / "new" / f"{n}.big:2,").write_bytes(
            f"From: a{n}@example.com\r\nTo: b@example.com\r\nSubject: text {n}\r\n"
            f"Message-ID: <text{n}@example.com>\r\n\r\n".encode()
            + body
            + f"end{n}\r\n".encode()
        )
    vault = new_vault(tmp_path / "vault")
    mailvault = [sys.executable, "-m", "mailvault", "--vault", str(vault)]
    peak = _max_rss_mib([*mailvault, "import", str(maildir), "--format", "maildir"])
    assert peak < 150, f"import with indexing peaked at {peak:.0f} MiB"
    hits = subprocess.run([*mailvault, "search", "--count", "text"], capture_output=True)
    assert hits.stdout.strip() == b"8"


def test_an_attached_big_message_is_saved_as_stored_in_bounded_memory(tmp_path: Path) -> None:
    """`show --part N` of a forwarded message holding 18 MB: the message's bytes exactly as
    they are stored, streamed (the parser's way took 280 MB for this 25 MB message)."""
    inner_eml = tmp_path / "inner.eml"
    _big_message(inner_eml, os.urandom(18 * 1024 * 1024))
    inner = inner_eml.read_bytes()
    eml = tmp_path / "forward.eml"
    eml.write_bytes(
        b"From: fwd@example.com\r\nSubject: fwd: the big one\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=OUT\r\n\r\n--OUT\r\n"
        b"Content-Type: text/plain\r\n\r\nforwarded as it came\r\n--OUT\r\n"
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=in.eml"
        b"\r\n\r\n" + inner + b"\r\n--OUT--\r\n"
    )
    vault = new_vault(tmp_path / "vault")
    mailvault = [sys.executable, "-m", "mailvault", "--vault", str(vault)]
    subprocess.run([*mailvault, "import", str(eml)], check=True, capture_output=True)
    digest = hashlib.sha256(eml.read_bytes()).hexdigest()
    shown = json.loads(
        subprocess.run([*mailvault, "show", "--json", digest], capture_output=True).stdout
    )
    attached = {a["index"]: a for a in shown["attachments"]}
    assert attached[2]["size"] == len(inner)
    assert attached[2]["sha256"] == hashlib.sha256(inner).hexdigest()
    assert not [d for d in shown["defects"] if "not known" in d]
    saved = tmp_path / "saved.eml"
    peak = _max_rss_mib([*mailvault, "show", digest, "--part", "2", "--out", str(saved)])
    assert peak < 180, f"show --part of an attached message peaked at {peak:.0f} MiB"
    assert saved.read_bytes() == inner


def test_a_part_streamed_out_is_the_part_the_whole_message_gives(
    messages: list[tuple[str, bytes]],
) -> None:
    """What `show --part N` writes for a big message (decoded as it streams by) equals what
    the whole-message path decodes, for every leaf and attached message it takes that way."""
    from mailvault.parse.mime import parse_bytes, walk
    from mailvault.show import part_bytes

    compared = messages_compared = 0
    for name, raw in messages[::3]:
        for index, _depth, part in walk(parse_bytes(raw)):
            if index > 40:  # one pass over the message per part: enough of the deep ones
                break
            enclosed = part.get_content_maintype() == "message" and part.is_multipart()
            if part.is_multipart() and not enclosed:
                continue
            out: list[bytes] = []
            skeleton = sk.Skeleton(extract=index, sink=out.append)
            skeleton.feed(raw)
            data = skeleton.finish()
            got = skeleton.extracted
            if got is None or not got.exact or index not in skeleton.verify(parse_bytes(data)):
                continue  # write_part falls back to the whole message for these
            assert b"".join(out) == part_bytes(raw, index), (name, index)
            if enclosed:  # an attached message is given as stored: bytes of the message itself
                encoding = str(part.get("content-transfer-encoding", "")).lower()
                assert encoding in ("base64", "quoted-printable") or b"".join(out) in raw
                messages_compared += 1
            compared += 1
    assert compared > 300 and messages_compared > 10


@pytest.mark.usefixtures("tiny_budgets")
def test_attached_messages_are_measured_as_stored_whole_or_streamed(
    messages: list[tuple[str, bytes]],
) -> None:
    """An attached message's size and sha256 are those of its bytes in the message (what
    `show --part N` writes), the same from the whole parse and from the skeleton of a big
    message, where no budget leaves them unknown any more."""
    from mailvault.show import part_bytes

    checked = 0
    for name, raw in messages:
        digest = hashlib.sha256(raw).hexdigest()
        whole = parse_message(raw, digest, ingest_time=INGEST)
        attached = [a for a in whole.attachments if a.content_type.startswith("message/")]
        if not attached:
            continue
        streamed = sk.parse_chunks([raw], digest, ingest_time=INGEST)
        by_index = {a.index: a for a in streamed.attachments}
        for attachment in attached:
            content = part_bytes(raw, attachment.index)
            assert attachment.size == len(content), (name, attachment.index)
            assert attachment.sha256 == hashlib.sha256(content).hexdigest(), name
            mine = by_index[attachment.index]
            assert (mine.size, mine.sha256) == (attachment.size, attachment.sha256), name
            assert f"part {attachment.index} size and sha256" not in str(streamed.defects)
            checked += 1
    assert checked > 40


def test_a_failure_in_the_skeleton_still_gives_a_parsed_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """parse_message never raises; neither may the streamed path: a bug there must not cost
    a message its index entry.  It falls back to the message's first WHOLE_MAX bytes."""
    monkeypatch.setattr(sk, "WHOLE_MAX", 64)

    def broken(self: sk.Skeleton, chunk: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sk.Skeleton, "feed", broken)
    raw = b"Subject: still here\r\n\r\n" + b"x" * 500 + b"\r\n"
    parsed = sk.parse_chunks([raw[:100], raw[100:]], "0" * 64, ingest_time=INGEST)
    assert parsed.subject == "still here" and parsed.size == len(raw)
    assert "parsed from its first 64 bytes only (RuntimeError)" in parsed.defects


def _att(name: bytes, seed: int, n: int = 6000) -> bytes:
    import random

    data = random.Random(seed).randbytes(n)
    return (
        b"Content-Type: application/octet-stream; name=" + name + b"\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
    )


_H = b"From: a@x\nSubject: s\nDate: Mon, 2 Mar 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
_TAIL = b'Content-Type: multipart/mixed; boundary="B"\n\n--B\n' + _att(b"x.bin", 1) + b"--B--\n"

# Corners where the stdlib parses a message otherwise than a naive walk would (QA found each):
# the skeleton must agree with it, or say in a defect that it cannot vouch for a part.
CORNERS = {
    "digest of plain posts": _H + b"Content-Type: multipart/digest; boundary=D\n\n"
    b"--D\n\nFrom: b@x\nSubject: one\n\nHello there, the first post\n--D\n"
    + _att(b"a.bin", 1)
    + b"--D--\n",
    "the same boundary nested": _H + b'Content-Type: multipart/mixed; boundary="Q"\n\n--Q\n'
    b'Content-Type: multipart/mixed; boundary="B"\n\n--B\n'
    b'Content-Type: multipart/mixed; boundary="B"\n\n--B\n'
    + _att(b"a.bin", 1)
    + b"--B--\n--B\n"
    + _att(b"hidden.bin", 2)
    + b"--Q\n"
    + _att(b"z.bin", 3)
    + b"--Q--\n",
    "delivery-status block with a type": _H
    + b'Content-Type: multipart/report; boundary="R"\n\n--R\n'
    b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n"
    b"Content-Type: message/rfc822\n\nFinal-Recipient: rfc822; a@x\n--R\n"
    + _att(b"x.bin", 1)
    + b"--R\n"
    + _att(b"z.bin", 2)
    + b"--R--\n",
    "delimiter then close": _H
    + b'Content-Type: multipart/mixed; boundary="B"\n\n--B\n--B--\n'
    + _att(b"x.bin", 1),
    "boundary with a colon": _H + b'Content-Type: multipart/mixed; boundary="a:b"\n\n'
    b"--a:b\nContent-Type: text/plain\n--a:b\n" + _att(b"x.bin", 1) + b"--a:b--\n",
    "RFC 2231 boundary": _H + b"Content-Type: multipart/mixed; boundary*=utf-8''%C3%A9\n\n"
    b"--\xc3\xa9\n" + _TAIL + b"--\xc3\xa9--\n" + _att(b"in.bin", 4),
    "bare CR line ends": (_H + _TAIL).replace(b"\n", b"\r"),
    "a bare CR before a delimiter": _H + _TAIL.replace(b"\n--B--", b"\r--B--"),
    "byte-order mark": b"\xef\xbb\xbf" + _H + _TAIL,
    "obsolete colon": _H.replace(b"Subject:", b"Subject  :") + _TAIL,
    "base64 with a character lost": _H + _TAIL.replace(b"=\n--B--", b"\n--B--"),
    "padding mid-line": _H + _TAIL.replace(b"\n--B--", b"=AAA\n--B--"),
}


@pytest.mark.usefixtures("tiny_budgets")
@pytest.mark.parametrize("name", list(CORNERS))
def test_mime_corners_agree_with_the_whole_parse_or_say_so(name: str) -> None:
    raw = CORNERS[name]
    digest = hashlib.sha256(raw).hexdigest()
    whole = parse_message(raw, digest, ingest_time=INGEST)
    for step in (5000, 7, 1):
        part = sk.parse_chunks(
            [raw[at : at + step] for at in range(0, len(raw), step)], digest, ingest_time=INGEST
        )
        assert (part.subject, part.date) == (whole.subject, whole.date), (name, step)
        for mine in part.attachments:
            theirs = next((a for a in whole.attachments if a.index == mine.index), None)
            unknown = f"attachment: part {mine.index} size and sha256 not known"
            exact = theirs is not None and (mine.size, mine.sha256) == (theirs.size, theirs.sha256)
            assert exact or unknown in part.defects, (name, step, mine.index)
        if len(part.attachments) < len(whole.attachments):
            assert any("not known" in d or "cut" in d for d in part.defects), name


@pytest.mark.usefixtures("tiny_budgets")
def test_a_uuencoded_attachment_is_measured_exactly() -> None:
    """uuencode is decoded on the stream as the stdlib decodes it (and where the stdlib
    gives up, its raw text is what is measured): no defect, the whole parse's values."""
    import binascii
    import random

    data = random.Random(5).randbytes(9000)
    lines = b"".join(binascii.b2a_uu(data[at : at + 45]) for at in range(0, len(data), 45))
    for body in (b"begin 644 a.bin\n" + lines + b"`\nend\n", b"no begin line\n" + lines):
        raw = (
            _H + b'Content-Type: multipart/mixed; boundary="B"\n\n--B\n'
            b"Content-Type: application/octet-stream; name=a.bin\n"
            b"Content-Transfer-Encoding: x-uuencode\n\n" + body + b"--B--\n"
        )
        digest = hashlib.sha256(raw).hexdigest()
        whole = parse_message(raw, digest, ingest_time=INGEST)
        part = sk.parse_chunks([raw[:2000], raw[2000:]], digest, ingest_time=INGEST)
        assert [(a.size, a.sha256) for a in part.attachments] == [
            (a.size, a.sha256) for a in whole.attachments
        ]
        assert not [d for d in part.defects if "not known" in d]
    assert whole.attachments[0].size > len(data)  # no begin line: the raw text, as the stdlib


@pytest.mark.usefixtures("tiny_budgets")
@pytest.mark.parametrize("step", [1, 333, 65536])
def test_chunk_boundaries_do_not_matter(messages: list[tuple[str, bytes]], step: int) -> None:
    """Lines of a part past its budget are taken in blocks when the chunk allows it and one by
    one when it does not: the result is the same wherever the store's chunks end."""
    sample = [m for m in messages if m[0].startswith("generated")][:: 3 if step > 1 else 15]
    for name, raw in sample:
        digest = hashlib.sha256(raw).hexdigest()
        one = sk.parse_chunks([raw], digest, ingest_time=INGEST)
        chunks = [raw[at : at + step] for at in range(0, len(raw), step)]
        assert sk.parse_chunks(chunks, digest, ingest_time=INGEST) == one, (name, step)


def test_the_parser_is_never_given_more_than_about_8_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's parser holds a message about nine times over: a 16 MiB text message took
    200 MB to parse, over fetch's 150 MB target.  A message over 8 MiB is parsed from its
    skeleton, whose bodies keep 8 MiB in all."""
    from mailvault.parse import message as message_module

    given: list[int] = []
    real = message_module.parse_message

    def measured(raw: bytes, *args: object, **kwargs: object) -> object:
        given.append(len(raw))
        return real(raw, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(message_module, "parse_message", measured)
    line = b"word " * 15 + b"\r\n"
    body = line * (15 * 1024 * 1024 // len(line))
    raw = b"From: a@example.com\r\nSubject: big\r\nContent-Type: text/plain\r\n\r\n" + body
    chunks = [raw[i : i + (1 << 20)] for i in range(0, len(raw), 1 << 20)]
    parsed = sk.parse_chunks(chunks, "0" * 64, ingest_time=datetime.now(UTC))
    assert parsed.size == len(raw) and parsed.subject == "big"
    assert given and max(given) <= 8 * 1024 * 1024 + 64 * 1024, given


def test_a_big_message_is_parsed_in_a_fraction_of_the_memory_parsebytes_took() -> None:
    """``BytesParser.parsebytes`` decodes the message to one str and wraps it in a StringIO
    (four bytes a character): parsing an 8 MB text message peaked at 9x its size, which put
    fetch and import with indexing over 150 MB.  Fed in slices, the same tree costs under 6x."""
    import tracemalloc
    from email.parser import BytesParser
    from email.policy import compat32

    from mailvault.parse.mime import parse_tree

    line = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod\r\n"
    raw = b"From: a@example.com\r\nSubject: big\r\n\r\n" + line * (4 * 1024 * 1024 // len(line))
    tracemalloc.start()
    try:
        tree, _ = parse_tree(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * len(raw)
    expected = BytesParser(policy=compat32).parsebytes(raw)
    assert tree.as_bytes() == expected.as_bytes()
    assert tree.items() == expected.items() and tree.get_payload() == expected.get_payload()
