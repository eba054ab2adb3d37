"""`mailvault show`: by sha256, prefix or Message-ID; --raw, --part/--out, --json, ambiguity."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import mailvault.cli.commands  # noqa: F401  (registers the commands)
from mailvault.cli import cli
from mailvault.indexer import catch_up
from mailvault.show import MessageNotFound, resolve
from mailvault.testkit.generator import GeneratedMessage
from mailvault.vault import Vault
from tests.test_index_support import PDF_BYTES, build_vault, generated, special_messages

Fixture = tuple[Vault, list[GeneratedMessage], list[str], dict[str, str]]


def run(vault: Vault, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--vault", str(vault.root), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    messages = generated(40, seed=12)
    vault, digests, named = build_vault(
        tmp_path_factory.mktemp("show") / "vault", messages, special_messages()
    )
    catch_up(vault)
    return vault, messages, digests, named


def test_resolve_forms(shown: Fixture) -> None:
    vault, messages, digests, named = shown
    path = vault.catalog_path
    assert resolve(path, digests[3]) == digests[3]
    assert resolve(path, digests[3][:8]) == digests[3]
    assert resolve(path, digests[3][:20].upper()) == digests[3]
    assert resolve(path, messages[3].message_id) == digests[3]
    assert resolve(path, f"<{messages[3].message_id}>") == digests[3]
    with pytest.raises(MessageNotFound):
        resolve(path, "<nobody@nowhere>")


def test_show_text(shown: Fixture) -> None:
    vault, _, _, named = shown
    result = run(vault, "show", named["pdf"][:10])
    assert result.exit_code == 0
    out = result.stdout
    assert "From:       Special Sender <special@example.com>" in out
    assert "To:         Receiver <receiver@example.org>" in out
    assert "Subject:    Numbers attached" in out
    assert "Message-ID: <pdf-attached@test.example>" in out
    assert "Date:       2023-06-15 12:00:00 UTC" in out
    assert "Please find the numbers attached." in out
    assert "[2] numbers.pdf  application/pdf" in out


def test_show_json(shown: Fixture) -> None:
    vault, messages, digests, _ = shown
    m = messages[7]
    doc = json.loads(run(vault, "show", "--json", f"<{m.message_id}>").stdout)
    assert doc["id"] == digests[7]
    assert doc["message_id"] == m.message_id
    assert doc["subject"] == m.subject
    assert doc["from"][0]["addr"] == m.from_addr
    assert [a["addr"] for a in doc["to"]] == list(m.to)
    assert [(a["filename"], a["size"]) for a in doc["attachments"]] == [
        (a.filename, a.size) for a in m.attachments
    ]


def test_raw_is_the_exact_stored_bytes(shown: Fixture) -> None:
    vault, messages, digests, _ = shown
    for i in (0, 5, 11):
        result = run(vault, "show", "--raw", digests[i])
        assert result.exit_code == 0
        assert result.stdout_bytes == messages[i].raw


def test_part_out_saves_the_decoded_part(shown: Fixture, tmp_path: Path) -> None:
    vault, messages, digests, named = shown
    doc = json.loads(run(vault, "show", "--json", named["pdf"]).stdout)
    (att,) = doc["attachments"]
    out = tmp_path / "n.pdf"
    result = run(vault, "show", named["pdf"], "--part", str(att["index"]), "--out", str(out))
    assert result.exit_code == 0
    assert out.read_bytes() == PDF_BYTES
    # a generated attachment: decoded size as the generator recorded it
    i = next(i for i, m in enumerate(messages) if m.attachments)
    doc = json.loads(run(vault, "show", "--json", digests[i]).stdout)
    first = doc["attachments"][0]
    result = run(vault, "show", digests[i], "--part", str(first["index"]), "--out", "-")
    assert len(result.stdout_bytes) == messages[i].attachments[0].size
    assert run(vault, "show", digests[i], "--part", "999", "--out", "-").exit_code == 2
    # a wrong part number leaves an existing --out file alone (the part goes in by rename)
    out.write_bytes(b"keep me")
    assert run(vault, "show", digests[i], "--part", "999", "--out", str(out)).exit_code == 2
    assert out.read_bytes() == b"keep me"


def test_part_out_to_a_fifo_writes_into_it(shown: Fixture, tmp_path: Path) -> None:
    """--out /dev/null or a FIFO is written to, never replaced by a regular file (as root, a
    rename over /dev/null once replaced the device)."""
    import os
    import threading

    vault, _, _, named = shown
    doc = json.loads(run(vault, "show", "--json", named["pdf"]).stdout)
    (att,) = doc["attachments"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    result = run(vault, "show", named["pdf"], "--part", str(att["index"]), "--out", str(fifo))
    reader.join(timeout=30)
    assert result.exit_code == 0 and got == [PDF_BYTES]
    assert fifo.is_fifo()


def test_ambiguous_prefix_lists_candidates(shown: Fixture) -> None:
    vault, _, _, _ = shown
    conn = sqlite3.connect(vault.catalog_path)
    with conn:
        for tail in ("0" * 56, "1" * 56):
            conn.execute(
                "INSERT INTO messages(sha256, size, first_ingest_at, first_source) "
                "VALUES (?, 1, '2024-01-01T00:00:00+00:00', 'test')",
                ("deadbeef" + tail,),
            )
    conn.close()
    result = run(vault, "show", "deadbeef")
    assert result.exit_code == 2
    assert "matches 2 messages" in result.stderr
    assert "deadbeef" + "0" * 56 in result.stderr and "deadbeef" + "1" * 56 in result.stderr


def test_bad_ids(shown: Fixture) -> None:
    vault, _, _, _ = shown
    short = run(vault, "show", "abc123")
    assert short.exit_code == 2 and "at least 8" in short.stderr
    missing = run(vault, "show", "<nobody@nowhere.example>")
    assert missing.exit_code == 2 and "no message" in missing.stderr
    assert run(vault, "show", "--raw", "--json", "abcdef12").exit_code == 2


def test_hostile_headers_and_body_are_neutralised(shown: Fixture) -> None:
    vault, _, _, named = shown
    out = run(vault, "show", named["hostile"]).stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "Evil" in out and "sequence." in out


SPOOF = (
    b"From: mallory@evil.example\r\nSubject: hello\r\nMessage-ID: <spoof-parts@x>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nreal body\r\n"
    b"--b\r\nContent-Type: application/x-\x1bc\x1b[8m\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''harmless.txt%0A%20%20%5B3%5D%20"
    b"invoice.pdf%E2%80%A8forged\r\n\r\nx\r\n--b--\r\n"
)


def test_attachment_types_and_names_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """The attachment list printed a part's Content-Type raw (ESC c resets the terminal) and
    kept line breaks in file names, so a message could wipe the screen and list an invented
    attachment."""
    vault, digests, named = build_vault(tmp_path / "vault", [], {"spoof": SPOOF})
    catch_up(vault)
    out = run(vault, "show", named["spoof"]).stdout
    assert "\x1b" not in out and "\u2028" not in out
    (listed,) = [line for line in out.splitlines() if line.startswith("  [")]
    assert "harmless.txt" in listed and "invoice.pdf" in listed  # one line, not two
    assert not any(line.lstrip().startswith("[3]") for line in out.splitlines())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_blob_is_never_shown(tmp_path: Path, damage: str) -> None:
    """An investigator must not pass on an altered copy as the archived message: every mode
    refuses, in one line, before printing a byte of it."""
    messages = generated(3, seed=5)
    vault, digests, _ = build_vault(tmp_path / "vault", messages, [])
    blob = vault.store().find(digests[1])
    assert blob is not None
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[20:]
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))
    for args in (["--raw"], [], ["--json"], ["--part", "0", "--out", "-"]):
        result = CliRunner().invoke(cli, ["--vault", str(vault.root), "show", *args, digests[1]])
        assert result.exit_code == 3, (args, result.output)
        assert result.stdout_bytes == b""
        assert result.stderr.count("\n") == 1 and f"blob {digests[1]}" in result.stderr
        assert "mailvault verify" in result.stderr
    assert run(vault, "show", "--raw", digests[0]).stdout_bytes == messages[0].raw


def test_a_purged_message_says_it_was_purged(tmp_path: Path) -> None:
    messages = generated(2, seed=6)
    vault, digests, _ = build_vault(tmp_path / "vault", messages)
    with sqlite3.connect(vault.catalog_path) as db:  # as retention leaves it: a tombstone
        db.execute(
            "UPDATE messages SET purged_at='2026-01-02T00:00:00+00:00' WHERE sha256=?",
            (digests[0],),
        )
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "show", digests[0]])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "is marked purged (at 2026-01-02" in result.stderr


def test_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    """`mailvault show --raw ID | head`: the broken pipe ends the command quietly."""
    import subprocess
    import sys

    big = b"From: a@b.c\r\nSubject: big\r\n\r\n" + b"a line of the body\r\n" * 100_000
    vault, _, named = build_vault(tmp_path / "vault", [], {"big": big})  # beyond a pipe's buffer
    argv = [sys.executable, "-m", "mailvault", "--vault", str(vault.root), "show", "--raw"]
    proc = subprocess.Popen([*argv, named["big"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(1)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b""


def test_bidirectional_overrides_are_neutralised(tmp_path: Path) -> None:
    """U+202E and friends can make text read in another order than it is stored."""
    raw = "From: a@b.c\r\nSubject: invoice \u202egpj.exe\r\n\r\npay \u2066here\u2069 now\r\n"
    vault, _, named = build_vault(tmp_path / "vault", [], {"bidi": raw.encode()})
    out = run(vault, "show", named["bidi"]).stdout
    assert "\u202e" not in out and "\u2066" not in out and "\u2069" not in out
    assert "invoice ?gpj.exe" in out


def _last_audit(vault: Vault) -> tuple[str, str, int, dict[str, object]]:
    with sqlite3.connect(vault.catalog_path) as db:
        command, query, results, detail = db.execute(
            "SELECT command, query, results, detail FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return command, query, results, json.loads(detail)


def test_an_ambiguous_lookup_is_audited_before_its_candidates_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Message-ID shared by two messages listed both (sha256, date, sender, subject) and wrote
    no audit entry: headers of archived mail were shown without a trace."""
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    twins = [
        f"From: a@example.com\r\nSubject: twin {n}\r\nMessage-ID: <twin@example.com>\r\n\r\n{n}\r\n"
        for n in (1, 2)
    ]
    digests = import_messages(vault, [t.encode() for t in twins])
    catch_up(vault)
    result = run(vault, "show", "<twin@example.com>")
    assert result.exit_code == 2 and "twin 1" in result.stderr
    command, query, results, detail = _last_audit(vault)
    assert (command, query, results) == ("show", "<twin@example.com>", 2)
    assert detail["mode"] == "candidates" and sorted(detail["ids"]) == sorted(digests)  # type: ignore[arg-type]
    assert run(vault, "show", "<nobody@example.com>").exit_code == 2
    assert _last_audit(vault)[1:3] == ("<nobody@example.com>", 0)
    # fail closed: without an audit entry, no candidate is listed
    import mailvault.audit
    from mailvault.errors import CatalogError

    def broken(*args: object, **kwargs: object) -> None:
        raise CatalogError("cannot record the show in the audit trail (test)")

    monkeypatch.setattr(mailvault.audit, "record", broken)
    refused = run(vault, "show", "<twin@example.com>")
    assert refused.exit_code == 3 and "twin 1" not in refused.stderr, refused.stderr


SPACED = (
    b"From: a@example.com\r\nSubject: spaced\r\nMessage-ID: <abc  def@example.com>\r\n\r\nx\r\n"
)


def test_a_message_id_with_spaces_is_found_whole(tmp_path: Path) -> None:
    """Message-ID: <abc def@example.com> was stored as "<abc", so neither show nor mid: found
    it; a vault parsed before is put right by `mailvault reindex`."""
    from mailvault.search import Searcher
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    (digest,) = import_messages(vault, [SPACED])
    catch_up(vault)

    def found(query: str) -> list[str]:
        return [h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)]

    for ident in ("<abc def@example.com>", "abc def@example.com", " <abc\tdef@example.com> "):
        assert resolve(vault.catalog_path, ident) == digest, ident
    for query in ("mid:<abc def@example.com>", 'mid:"abc  def@example.com"', "mid:<abc def*>"):
        assert found(query) == [digest], query
    assert "Message-ID: <abc def@example.com>" in run(vault, "show", digest).stdout
    # a catalog and index written by the old parser: the id cut at the space
    with sqlite3.connect(vault.catalog_path) as db:
        db.execute("UPDATE message_meta SET message_id='<abc', thread_id='<abc'")
    db.close()
    assert run(vault, "reindex").exit_code == 0
    assert resolve(vault.catalog_path, "<abc def@example.com>") == digest
    assert found("thread:<abc def@example.com>") == [digest]


def test_an_empty_message_id_is_a_usage_error(shown: Fixture) -> None:
    """`show '<>'` listed the messages without a Message-ID as "Message-ID <> is shared by"."""
    vault, _, _, _ = shown
    for ident in ("<>", "< >", "<", ">"):
        result = run(vault, "show", ident)
        assert result.exit_code == 2, (ident, result.stderr)
        assert "is an empty Message-ID" in result.stderr and "shared" not in result.stderr


def test_a_spaced_id_cut_by_an_older_parse_names_reindex_as_the_fix(tmp_path: Path) -> None:
    """On a catalog parsed before ids with spaces were kept whole, `show '<abc def@x>'` said
    "run `mailvault index`", which changes nothing: only `mailvault reindex` parses it again."""
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    (digest,) = import_messages(vault, [SPACED])
    catch_up(vault)
    with sqlite3.connect(vault.catalog_path) as db:
        db.execute("UPDATE message_meta SET message_id='<abc', thread_id='<abc'")
    db.close()
    missing = run(vault, "show", "<abc def@example.com>")
    assert missing.exit_code == 2
    assert "run `mailvault reindex` once" in missing.stderr, missing.stderr
    assert "mailvault index`" not in missing.stderr
    other = run(vault, "show", "<nobody else@example.com>")  # no cut form stored: not parsed yet?
    assert other.exit_code == 2 and "run `mailvault index`" in other.stderr
    assert run(vault, "reindex").exit_code == 0
    assert resolve(vault.catalog_path, "<abc def@example.com>") == digest


def test_out_in_a_missing_directory_is_a_usage_error(shown: Fixture, tmp_path: Path) -> None:
    """It named the internal temporary file ("running `show` .../.x.tmp-... failed")."""
    vault, _, _, named = shown
    target = tmp_path / "no" / "such" / "dir" / "x.pdf"
    result = run(vault, "show", named["pdf"], "--part", "2", "--out", str(target))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "does not exist" in result.stderr and ".tmp-" not in result.stderr


def _nested_multiparts(depth: int) -> bytes:
    head = b'From: a@b.c\r\nSubject: deep\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n'
    opening = b"".join(
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i)
        for i in range(1, depth)
    )
    inner = b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeepest\r\n--b%d--\r\n" % (
        depth - 1,
        depth - 1,
    )
    closing = b"".join(b"--b%d--\r\n" % i for i in range(depth - 2, -1, -1))
    return head + opening + inner + closing


def _nested_messages(depth: int) -> bytes:
    inner = b"From: x@b.c\r\nSubject: innermost\r\n\r\ninnermost\r\n"
    for i in range(depth):
        inner = b"From: l%d@b.c\r\nContent-Type: message/rfc822\r\n\r\n" % i + inner
    return (
        b'From: a@b.c\r\nSubject: r\r\nContent-Type: multipart/mixed; boundary="R"\r\n\r\n'
        b"--R\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--R--\r\n"
    )


@pytest.mark.parametrize(
    "raw", [_nested_multiparts(5000), _nested_messages(300)], ids=["multiparts", "messages"]
)
def test_a_part_of_a_message_nested_too_deep_is_an_error_naming_raw(
    tmp_path: Path, raw: bytes
) -> None:
    """5,000 nested multiparts made `show --part` print a RecursionError traceback; an
    enclosed message nesting 300 more was written as an empty file, "wrote part 1 (0 bytes)",
    exit 0.  Either is one line naming --raw, exit 2, and no file."""
    vault, _, named = build_vault(tmp_path / "vault", [], {"deep": raw})
    out = tmp_path / "part1"
    for target in (str(out), "-"):
        result = run(vault, "show", named["deep"], "--part", "1", "--out", target)
        assert result.exit_code == 2, result.output
        assert result.stdout_bytes == b""
        assert result.stderr.count("\n") == 1, result.stderr
        assert "nest too deep" in result.stderr
        assert f"`mailvault show {named['deep']} --raw`" in result.stderr
    assert not out.exists()
    assert run(vault, "show", "--raw", named["deep"]).stdout_bytes == raw


INVISIBLE = "\u200e\u200f\u061c\u200b\u200d\ufeff\u2060"  # LRM RLM ALM ZWSP ZWJ BOM WJ


def test_show_and_search_mask_the_same_invisible_characters(tmp_path: Path) -> None:
    """show let through the marks search masked (LRM, RLM, zero-width characters), and
    neither masked the Arabic letter mark or the BOM: one definition serves both now."""
    raw = f"From: a@b.c\r\nSubject: pay{INVISIBLE}now\r\n\r\nbody{INVISIBLE}text\r\n".encode()
    vault, _, named = build_vault(tmp_path / "vault", [], {"marks": raw})
    catch_up(vault)
    out = run(vault, "show", named["marks"]).stdout
    assert f"pay{'?' * len(INVISIBLE)}now" in out and f"body{'?' * len(INVISIBLE)}text" in out
    listed = run(vault, "search", "pay").stdout
    assert "pay" in listed and not any(ch in listed for ch in INVISIBLE)


def test_a_date_in_the_year_1_is_written_with_four_digits(tmp_path: Path) -> None:
    raw = b"From: a@b.c\r\nSubject: s\r\nDate: Mon, 01 Jan 0001 00:00:00 +0000\r\n\r\nx\r\n"
    vault, _, named = build_vault(tmp_path / "vault", [], {"year1": raw})
    (line,) = [ln for ln in run(vault, "show", named["year1"]).stdout.splitlines() if "Date:" in ln]
    assert line.startswith("Date:       0001-01-01 00:00:00 UTC"), line


def test_an_out_path_that_is_not_utf8_is_named_with_escapes(shown: Fixture) -> None:
    """--out in a missing directory named a file name byte \\xe9 as the surrogate \\udce9."""
    from mailvault.errors import UsageError
    from mailvault.show import save_part

    vault, _, _, named = shown
    target = Path("/nonexistent-caf\udce9") / "part.bin"
    with pytest.raises(UsageError) as raised:
        save_part(vault.read_store(), named["pdf"], 2, target)
    assert "/nonexistent-caf\\xe9/part.bin" in str(raised.value)
    assert "\udce9" not in str(raised.value)


def test_the_wrote_part_line_names_an_odd_out_path_with_escapes(
    shown: Fixture, tmp_path: Path
) -> None:
    """The "wrote part" line printed a name byte \\xe9 as the surrogate \\udce9, and a line
    break or an escape sequence in the name raw."""
    vault, _, _, named = shown
    out = tmp_path / "caf\udce9\n\x1b[2Kx.pdf"
    result = run(vault, "show", named["pdf"], "--part", "2", "--out", str(out))
    assert result.exit_code == 0 and out.read_bytes() == PDF_BYTES
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr, result.stderr
    assert "caf\\xe9" in result.stderr and "\udce9" not in result.stderr
