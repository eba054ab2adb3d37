"""The seeded mail generator: deterministic, parseable, and true to its own record."""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
import mailbox
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

import pytest

from mailvault.testkit.generator import (
    STOPWORDS,
    GeneratedMessage,
    body_words,
    generate,
    main,
)

SAMPLE = 400


@pytest.fixture(scope="module")
def sample() -> list[GeneratedMessage]:
    return list(generate(SAMPLE, seed=11))


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def digest(messages: list[GeneratedMessage]) -> str:
    h = hashlib.sha256()
    for msg in messages:
        h.update(msg.raw)
    return h.hexdigest()


# -- determinism ----------------------------------------------------------------------------


def test_same_seed_same_bytes_and_records() -> None:
    first = list(generate(150, seed=5))
    second = list(generate(150, seed=5))
    assert first == second
    assert [m.raw for m in first] == [m.raw for m in second]


def test_other_seed_other_mail() -> None:
    assert digest(list(generate(20, seed=1))) != digest(list(generate(20, seed=2)))


def test_consuming_part_of_the_stream_changes_nothing() -> None:
    """A consumer that stops early sees the same first messages (for the same count)."""
    stream = generate(50, seed=3)
    head = [next(stream) for _ in range(10)]
    assert head == list(generate(50, seed=3))[:10]


def test_same_bytes_in_another_process_with_other_hash_seed() -> None:
    code = (
        "import hashlib,sys;from mailvault.testkit.generator import generate;"
        "h=hashlib.sha256();[h.update(m.raw) for m in generate(60, seed=9)];"
        "sys.stdout.write(h.hexdigest())"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in (1, 2)
    }
    assert out == {digest(list(generate(60, seed=9)))}


# -- every message parses and matches its record -------------------------------------------


def test_messages_parse_without_defects(sample: list[GeneratedMessage]) -> None:
    for gm in sample:
        msg = parse(gm.raw)
        for part in msg.walk():
            assert not part.defects, (gm.message_id, part.defects)
        for name, value in msg.items():
            assert not getattr(value, "defects", ()), (gm.message_id, name, value.defects)
        assert b"\n" not in gm.raw.replace(b"\r\n", b""), "bare LF"
        assert max(len(line) for line in gm.raw.split(b"\r\n")) <= 998
        assert gm.raw.endswith(b"\r\n")


def test_headers_match_record(sample: list[GeneratedMessage]) -> None:
    for gm in sample:
        msg = parse(gm.raw)
        assert str(msg["subject"]) == gm.subject
        assert msg["message-id"] == f"<{gm.message_id}>"
        date = parsedate_to_datetime(str(msg["date"]))
        assert date == gm.date and gm.date.tzinfo == UTC
        assert datetime(2022, 1, 1, tzinfo=UTC) <= gm.date <= datetime(2026, 1, 1, tzinfo=UTC)
        ((from_name, from_addr),) = getaddresses([str(msg["from"])])
        assert (from_name, from_addr) == (gm.from_name, gm.from_addr)
        assert tuple(a for _, a in getaddresses([str(msg["to"])])) == gm.to
        assert tuple(a for _, a in getaddresses([str(msg.get("cc", ""))]) if a) == gm.cc
        if gm.in_reply_to is None:
            assert msg["in-reply-to"] is None
        else:
            assert msg["in-reply-to"] == f"<{gm.in_reply_to}>"
            assert str(msg["references"]).split() == [f"<{r}>" for r in gm.references]
            assert gm.references[-1] == gm.in_reply_to
        if gm.list_id is None:
            assert msg["list-id"] is None
        else:
            assert str(msg["list-id"]).endswith(f"<{gm.list_id}>")


def test_bodies_and_attachments_match_record(sample: list[GeneratedMessage]) -> None:
    for gm in sample:
        msg = parse(gm.raw)
        text = msg.get_body(preferencelist=("plain",))
        assert text is not None
        content = text.get_content().replace("\r\n", "\n")
        assert content == gm.body_text
        assert (msg.get_body(preferencelist=("html",)) is not None) == gm.html
        found: list[tuple[str | None, str, int | None]] = []
        for part in msg.iter_attachments():
            if part.get_content_type() == "message/rfc822":
                # The parser re-serialises the inner message, so its size is not comparable.
                found.append((part.get_filename(), part.get_content_type(), None))
                continue
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found.append((part.get_filename(), part.get_content_type(), len(payload)))
        expected = [
            (a.filename, a.content_type, None if a.content_type == "message/rfc822" else a.size)
            for a in gm.attachments
        ]
        assert found == expected, gm.message_id


def test_words_are_in_the_body(sample: list[GeneratedMessage]) -> None:
    markers = [gm.marker for gm in sample]
    assert len(set(markers)) == len(markers)
    for gm in sample:
        assert gm.words == body_words(gm.body_text)
        assert gm.marker in gm.words
        assert not gm.words & STOPWORDS
        assert all(w == w.lower() for w in gm.words)
        # The marker is in this message only.
        assert all(gm.marker not in other.words for other in sample if other is not gm)
    # Each language contributes words that a search must find in the decoded body.
    by_language = {gm.language: gm for gm in sample}
    assert set(by_language) == {"en", "de", "fr", "ru", "ja"}
    assert any(w in by_language["de"].words for w in ("größe", "übersicht", "straße", "käse"))
    assert any(not w.isascii() for w in by_language["ru"].words)
    assert any("\u3040" <= w[0] <= "\u9fff" for w in by_language["ja"].words)


def test_mix_of_features(sample: list[GeneratedMessage]) -> None:
    raws = [gm.raw for gm in sample]

    def share(pred: Callable[[GeneratedMessage], object]) -> float:
        return sum(1 for gm in sample if pred(gm)) / len(sample)

    assert 0.25 < share(lambda gm: gm.html) < 0.75
    assert 0.1 < share(lambda gm: gm.attachments) < 0.5
    assert 0.1 < share(lambda gm: gm.in_reply_to) < 0.4
    assert 0.05 < share(lambda gm: gm.list_id) < 0.3
    assert any(b"\r\n.\r\n" in r or b"\r\n..." in r for r in raws), "a line starting with '.'"
    assert any(b"\r\nFrom " in r for r in raws), "a body line starting with 'From '"
    for needle in (
        b"=?UTF-8?B?",
        b"=?UTF-8?Q?",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: 8bit",
        b"charset=iso-8859-1",
        b"filename*=utf-8''",
        b"multipart/alternative",
        b"multipart/mixed",
    ):
        assert any(needle in r for r in raws), needle
    years = {gm.date.year for gm in sample}
    assert years == {2022, 2023, 2024, 2025}


def test_threads_point_at_earlier_messages(sample: list[GeneratedMessage]) -> None:
    seen: dict[str, GeneratedMessage] = {}
    for gm in sample:
        if gm.in_reply_to is not None:
            parent = seen[gm.in_reply_to]
            assert gm.date > parent.date
            assert gm.subject.endswith(parent.subject.split(": ", 1)[-1].split(" : ", 1)[-1])
        seen[gm.message_id] = gm


# -- sizes and speed --------------------------------------------------------------------------


def test_size_distribution() -> None:
    sizes = [gm.size for gm in generate(1500, seed=2, median_size=15_000, max_size=400_000)]
    median = statistics.median(sizes)
    assert 10_000 < median < 22_000
    assert max(sizes) <= 400_000
    assert sum(s > 60_000 for s in sizes) >= 15  # a tail
    assert sum(s < 5_000 for s in sizes) >= 15  # and short notes


def test_max_size_is_a_hard_cap() -> None:
    sizes = [gm.size for gm in generate(300, seed=4, median_size=20_000, max_size=30_000)]
    assert max(sizes) <= 30_000


def test_median_follows_the_parameter() -> None:
    sizes = [gm.size for gm in generate(400, seed=6, median_size=4_000)]
    assert 2_800 < statistics.median(sizes) < 5_600


def test_a_thousand_messages_make_a_realistic_volume() -> None:
    """(How fast the generator is shows in `make bench`, which times writing its corpus.)"""
    total = sum(gm.size for gm in generate(1000, seed=8))
    assert total > 10_000_000


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        list(generate(-1))
    with pytest.raises(ValueError):
        list(generate(1, max_size=1000))


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_maildir(tmp_path: Path) -> None:
    target = tmp_path / "Maildir"
    assert main(["--count", "25", "--seed", "3", "--maildir", str(target)]) == 0
    assert {p.name for p in target.iterdir()} == {"new", "cur", "tmp"}
    files = sorted(
        (target / "new").iterdir(), key=lambda p: int(p.name.split(".M")[1].split("P")[0])
    )
    expected = list(generate(25, seed=3))
    assert [f.read_bytes() for f in files] == [gm.raw for gm in expected]
    assert int(files[0].stat().st_mtime) == int(expected[0].date.timestamp())


def test_cli_mbox(tmp_path: Path) -> None:
    target = tmp_path / "mail.mbox"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailvault.testkit.generator",
            "--count",
            "40",
            "--seed",
            "7",
            "--mbox",
            str(target),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    expected = list(generate(40, seed=7))
    box = mailbox.mbox(target)
    try:
        assert len(box) == 40
        for gm, (_, stored) in zip(expected, box.items(), strict=True):
            assert stored["Message-ID"] == f"<{gm.message_id}>"
            # mboxrd: one ">" was added to every line that matched ^>*From
            body = stored.as_bytes().split(b"\n\n", 1)[1]
            assert b"\nFrom " not in body
    finally:
        box.close()


def test_cli_needs_a_target() -> None:
    with pytest.raises(SystemExit):
        main(["--count", "1"])
