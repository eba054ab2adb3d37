"""`mailvault import`: Maildir trees, mbox variants, EML, damage, provenance and the report."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mailvault import ledger
from mailvault.resources import json_schema
from mailvault.vault import open_vault
from tests.test_export_kit import (
    catalog_set,
    cli,
    cli_json,
    crafted_messages,
    manifest_lines,
    new_vault,
    sha,
)

A = b"From: a@example.com\r\nSubject: a\r\n\r\nalpha\r\n"
B = b"From: b@example.com\nSubject: b\n\nbeta\n"
C = b"From: c@example.com\r\nSubject: c\r\n\r\ngamma\r\n"
D = b"From: d@example.com\r\nSubject: d\r\n\r\ndelta\r\n"


def import_json(vault: Path, *args: str) -> tuple[int, dict]:
    code, report = cli_json(vault, "import", "--no-index", *args)
    jsonschema.validate(report, json_schema("import-report.schema.json"))
    return code, report


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_maildir_tree_with_maildirplusplus_and_nested_folders(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    write(md / "cur" / "1.host:2,S", A)
    write(md / "new" / "2.host", B)
    write(md / ".Sent" / "cur" / "3.host:2,S", C)
    (md / ".Sent" / "new").mkdir()
    write(md / "archive" / "2020" / "new" / "4.host", D)
    write(md / "archive" / "2020" / "cur" / "5.host:2,S", A)  # a duplicate
    write(md / "tmp" / "6.host", b"half delivered")
    write(md / "cur" / ".hidden", b"x")
    write(md / "dovecot-uidlist", b"3 V1 N1\n")
    write(md / "stray-file", b"not in cur or new")
    write(md / ".notmuch" / "xapian" / "db", b"index, not mail")
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(md), "--account", "old")
    assert code == 0, report
    assert report["sources"] == [{"path": str(md), "format": "maildir"}]
    assert (report["imported"], report["duplicates"], report["rejected"]) == (4, 1, [])
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"6.host", ".hidden", "stray-file"}
    assert "tmp/" in skipped["6.host"]
    assert catalog_set(vault) == {sha(m) for m in (A, B, C, D)}
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        rows = db.execute("SELECT sha256, account, source, source_kind FROM imports").fetchall()
        first = db.execute("SELECT first_source FROM messages WHERE sha256=?", (sha(C),)).fetchone()
        entries = list(ledger.iter_entries(db))
    assert (
        len(rows) == 5 and {r[1] for r in rows} == {"old"} and {r[3] for r in rows} == {"maildir"}
    )
    assert first[0] == f"import:{md / '.Sent' / 'cur' / '3.host:2,S'}"
    ingests = [e for e in entries if e["kind"] == "ingest"]
    assert len(ingests) == 5 and all(e["account"] == "old" for e in ingests)
    assert ledger.check_chain(entries) == []


def test_eml_directory_single_file_and_strays(tmp_path: Path) -> None:
    src = tmp_path / "emls"
    write(src / "a.eml", A)
    write(src / "sub" / "b.EML", B)
    write(src / "notes.txt", b"hello")
    write(src / "old", b"From someone Fri Jul  8 12:08:34 2011\n" + A)
    write(src / "empty.eml", b"")
    write(src / "box" / "cur" / "1:2,S", C)  # a Maildir among them: one note, not one per file
    write(src / "box" / "new" / "2", D)
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(src))
    assert code == 0 and report["sources"][0]["format"] == "eml"
    assert report["imported"] == 3  # a, b and the empty message (with a warning)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"notes.txt", "old", "box"}
    assert f"import it on its own (mailvault import {src / 'box'})" in skipped["box"]
    assert "--format eml" in skipped["notes.txt"]
    assert f"mailvault import {src / 'old'}" in skipped["old"]
    assert any("empty" in w["message"] for w in report["warnings"])
    single = write(tmp_path / "c.eml", C)
    code, report = import_json(vault, str(single))
    assert (code, report["imported"], report["sources"][0]["format"]) == (0, 1, "eml")
    assert catalog_set(vault) == {sha(A), sha(B), sha(b""), sha(C)}


def test_eml_file_starting_with_from_line_keeps_it(tmp_path: Path) -> None:
    raw = b"From x@y Mon Jan  1 00:00:00 2001\r\nSubject: s\r\n\r\nbody\r\n"
    vault = new_vault(tmp_path / "vault")
    code, _ = import_json(vault, str(write(tmp_path / "m.eml", raw)))
    assert code == 0 and catalog_set(vault) == {sha(raw)}


MBOXRD = (
    b"From a@example.com Mon Jan  1 00:00:00 2001\n"
    b"Subject: one\n\n>From quoted\n>>From double\nFrom: not a separator\n\n"
    b"From b@example.com Tue Jan  2 00:00:00 2001\n"
    b"Subject: two\n\nlast\n"
)


def test_mboxrd_is_unquoted_and_mboxo_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "box", MBOXRD)
    one = b"Subject: one\n\nFrom quoted\n>From double\nFrom: not a separator\n"
    two = b"Subject: two\n\nlast\n"
    vault = new_vault(tmp_path / "v1")
    code, report = import_json(vault, str(path))
    assert code == 0 and report["sources"][0]["format"] == "mbox"
    assert catalog_set(vault) == {sha(one), sha(two)}
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        offsets = sorted(r[0] for r in db.execute("SELECT source_offset FROM imports"))
    assert offsets == [MBOXRD.index(b"Subject: one"), MBOXRD.index(b"Subject: two")]
    vault2 = new_vault(tmp_path / "v2")
    code, _ = import_json(vault2, str(path), "--mbox-variant", "mboxo")
    kept = b"Subject: one\n\n>From quoted\n>>From double\nFrom: not a separator\n"
    assert code == 0 and catalog_set(vault2) == {sha(kept), sha(two)}


def test_content_length_is_honoured_when_consistent(tmp_path: Path) -> None:
    body1 = b"a body line\nFrom inside Mon Jan  1 00:00:00 2001 unquoted\nend\n"
    msg1 = b"Subject: cl\nContent-Length: %d\n\n" % len(body1) + body1
    msg2 = b"Subject: wrong\nContent-Length: 3\n\nlonger than three\n"
    msg3 = b"Subject: plain\n\nplain\n"
    data = (
        b"From - Mon Jan  1 00:00:00 2001\n"
        + msg1
        + b"From - Mon Jan  1 00:00:00 2001\n"
        + msg2
        + b"\n"
        + b"From - Mon Jan  1 00:00:00 2001\n"
        + msg3
    )
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(write(tmp_path / "cl.mbox", data)))
    assert code == 0
    assert catalog_set(vault) == {sha(msg1), sha(msg2), sha(msg3)}
    warnings = [w for w in report["warnings"] if "Content-Length: 3" in w["message"]]
    assert len(warnings) == 1 and warnings[0]["offset"] == data.index(b"Subject: wrong")


def test_damaged_regions_are_reported_with_offsets_and_the_rest_imported(tmp_path: Path) -> None:
    garbage = b"\x00\x00garbage before any From_ line\n"
    good1 = b"Subject: 1\n\nbody one\n"
    good2 = b"Subject: 2\n\nbody two\n"
    data = (
        garbage
        + b"From a@b Mon Jan  1 00:00:00 2001\n"
        + good1
        + b"\n"
        + b"From a@b Mon Jan  1 00:00:00 2001\n"
        + b"From a@b Mon Jan  1 00:00:00 2001\n"
        + good2
    )
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(write(tmp_path / "bad.mbox", data)))
    assert code == 1 and report["ok"] is False
    assert catalog_set(vault) == {sha(good1), sha(good2)}
    rejected = [(r["offset"], r["length"]) for r in report["rejected"]]
    empty_at = data.index(b"From a@b", data.index(good1)) + len(
        b"From a@b Mon Jan  1 00:00:00 2001\n"
    )
    assert rejected == [(0, len(garbage)), (empty_at, 0)]


def _exported_mbox(
    tmp_path: Path, messages: list[bytes], line_endings: str = "crlf"
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """``messages`` imported into a vault and exported as an mbox (crlf by default): the
    vault, the mbox and its manifest entries."""
    src = tmp_path / "src"
    for i, raw in enumerate(messages):
        write(src / f"{i}.eml", raw)
    vault = new_vault(tmp_path / "vault")
    assert import_json(vault, str(src))[0] == 0
    box = tmp_path / "out.mbox"
    result = cli(
        vault, "export", "--format", "mbox", "--out", str(box), "--line-endings", line_endings
    )
    assert result.exit_code == 0, result.output
    return vault, box, manifest_lines(Path(f"{box}.manifest.jsonl"))


def test_our_mbox_export_imports_exactly_through_its_manifest(tmp_path: Path) -> None:
    crafted = crafted_messages()[:6]
    vault, box, entries = _exported_mbox(tmp_path, crafted)
    fresh = new_vault(tmp_path / "fresh")
    code, report = import_json(fresh, str(box))
    assert code == 0 and report["warnings"] == []
    assert catalog_set(fresh) == {sha(m) for m in crafted}  # including the no-final-newline ones
    # Damage inside one message: that one is rejected at its offset, the others still import.
    victim = entries[2]
    data = bytearray(box.read_bytes())
    data[victim["offset"] + 3] ^= 0x20
    box.write_bytes(bytes(data))
    damaged = new_vault(tmp_path / "damaged")
    code, report = import_json(damaged, str(box))
    assert code == 1
    assert [r["offset"] for r in report["rejected"]] == [victim["offset"]]
    assert "does not match the export manifest" in report["rejected"][0]["reason"]
    assert catalog_set(damaged) == {sha(m) for m in crafted} - {victim["sha256"]}
    # A destroyed From_ line: the manifest still knows where the message was.
    data = bytearray(box.read_bytes())
    at = entries[4]["offset"]
    line_start = data.rindex(b"\n", 0, at - 1) + 1
    data[line_start : line_start + 4] = b"Frxm"
    box.write_bytes(bytes(data))
    again = new_vault(tmp_path / "again")
    code, report = import_json(again, str(box))
    assert code == 1
    offsets = {r["offset"] for r in report["rejected"]}
    assert victim["offset"] in offsets and entries[4]["offset"] in offsets


def test_bom_and_unquoted_mbox_from_the_wild(tmp_path: Path) -> None:
    data = (
        b"\xef\xbb\xbfFrom -\nSubject: one\n\nFrom Russia with love\n\n"
        b"From -\nSubject: two\n\nFrom Russia with love\nYear: 1963\n"
    )
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(write(tmp_path / "unmunged", data)))
    assert code == 0 and report["messages"] == 2
    assert (
        report["warnings"][0]["offset"] == 0
        and "byte-order mark" in report["warnings"][0]["message"]
    )


def test_duplicates_are_counted_and_reimport_is_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "s"
    write(src / "a.eml", A)
    write(src / "a-copy.eml", A)
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(src))
    assert (code, report["imported"], report["duplicates"], report["messages"]) == (0, 1, 1, 2)
    code, report = import_json(vault, str(src))
    assert (code, report["imported"], report["duplicates"]) == (0, 0, 2)
    assert catalog_set(vault) == {sha(A)}


def _unescaped(stored: str) -> bytes:
    """The bytes of a path the catalog holds, read back as docs/sql.md says."""
    if not re.search(r"\\x[89a-f][0-9a-f]", stored):
        return stored.encode("utf-8")
    return re.sub(
        rb"\\(\\|x[0-9a-f]{2})",
        lambda m: b"\\" if m[1] == b"\\" else bytes.fromhex(m[1][1:].decode()),
        stored.encode("utf-8"),
    )


def test_sources_whose_names_are_not_utf8_are_imported_and_recorded(tmp_path: Path) -> None:
    """A file name may be any bytes (Latin-1 names from an unzipped Windows archive): each kind
    of source so named is imported, recorded in an escaped form that reads back as its bytes,
    and leaves nothing for verify to find, on the first run and on the next."""
    md = tmp_path / "Maildir"
    write(md / "cur" / "caf\udce9 back\\slash \\xe9:2,S", A)  # the byte, and the text \xe9
    write(md / "cur" / "normal:2,S", B)
    (md / "new").mkdir()
    eml = write(tmp_path / "one-\udcff.eml", C)
    folder = tmp_path / "dir-\udce8"
    write(folder / "m-\udce8.eml", D)
    _, box, _ = _exported_mbox(tmp_path / "exported", [A, C])
    odd_box = box.with_name("out-\udcfc.mbox")
    for suffix in ("", ".manifest.json", ".manifest.jsonl"):
        Path(f"{box}{suffix}").rename(f"{odd_box}{suffix}")
    sources = [str(md), str(eml), str(folder), str(odd_box)]
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, *sources)
    assert (code, report["imported"], report["duplicates"]) == (0, 4, 2), report
    assert report["warnings"] == [] and report["rejected"] == []
    assert catalog_set(vault) == {sha(m) for m in (A, B, C, D)}
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        recorded = {row[0] for row in db.execute("SELECT source FROM imports")}
        firsts = {row[0] for row in db.execute("SELECT first_source FROM messages")}
        ingests = [
            ledger.parse_detail(row[0])["source"]
            for row in db.execute(
                "SELECT detail FROM ledger WHERE kind = 'ingest' AND detail LIKE '%import:%'"
            )
        ]
    assert str(md / "cur" / "caf\\xe9 back\\\\slash \\\\xe9:2,S") in recorded
    assert {os.fsdecode(_unescaped(s)) for s in recorded} == {
        str(md / "cur" / "caf\udce9 back\\slash \\xe9:2,S"),
        str(md / "cur" / "normal:2,S"),
        str(eml),
        str(folder / "m-\udce8.eml"),
        str(odd_box),
    }
    assert {f"import:{s}" for s in recorded} >= firsts and set(ingests) <= {
        f"import:{s}" for s in recorded
    }
    code, report = import_json(vault, *sources)
    assert (code, report["imported"], report["duplicates"]) == (0, 0, 6), report
    assert cli(vault, "verify").exit_code == 0


def test_purged_content_is_not_brought_back(tmp_path: Path) -> None:
    vault = new_vault(tmp_path / "vault")
    path = write(tmp_path / "a.eml", A)
    assert import_json(vault, str(path))[0] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE messages SET purged_at='2026-01-01T00:00:00+00:00'")
    blob = open_vault(vault).store().find(sha(A))
    assert blob is not None
    blob.unlink()
    code, report = import_json(vault, str(path))
    assert code == 1 and "purged" in report["rejected"][0]["reason"]
    assert open_vault(vault).store().find(sha(A)) is None


def _lf_export_without_manifest(
    tmp_path: Path, fmt: str, messages: tuple[bytes, ...]
) -> tuple[Path, Path]:
    """A vault holding ``messages`` and its ``--line-endings lf`` export in ``fmt``, Maildir's
    and EML's manifest removed (the file names alone name the originals): (vault, export)."""
    vault = new_vault(tmp_path / "vault")
    paths = [str(write(tmp_path / f"{n}.eml", m)) for n, m in enumerate(messages)]
    assert import_json(vault, *paths)[0] == 0
    out = tmp_path / f"out-{fmt}"
    result = cli(vault, "export", "--format", fmt, "--out", str(out), "--line-endings", "lf")
    assert result.exit_code == 0, result.stderr
    if fmt != "mbox":
        for manifest in out.glob("manifest.json*"):
            manifest.unlink()
    return vault, out


@pytest.mark.parametrize("fmt", ["mbox", "maildir", "eml"])
def test_an_lf_export_of_purged_mail_does_not_bring_it_back(tmp_path: Path, fmt: str) -> None:
    """An lf export's bytes differ from the vault's (CRLF) copy, but its manifest entry, or
    the file name (Maildir ,H=<sha256>; <sha256>.eml), names the purged original."""
    vault, out = _lf_export_without_manifest(tmp_path, fmt, (A, C))
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE messages SET purged_at='2026-01-01T00:00:00+00:00'")
    code, report = import_json(vault, str(out))
    assert code == 1 and report["imported"] == 0
    assert len(report["rejected"]) == 2
    assert all("purged" in r["reason"] for r in report["rejected"])


def _purge_all(vault: Path) -> None:
    """Purge every message as `retention apply` does (its ledger entries included): planned
    and vetted a thousand years from now."""
    from mailvault.compliance import apply, plan

    toml = vault / "mailvault.toml"
    toml.write_text(toml.read_text() + "\n[retention]\nkeep_days = 1\n")
    assert cli(vault, "index").exit_code == 0  # retention checks holds through the index
    opened = open_vault(vault)
    candidates = plan(opened, now=datetime(3000, 1, 1, tzinfo=UTC))
    assert candidates and not any(c.held_by or c.kept for c in candidates)
    apply(opened, candidates)


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_a_file_named_after_purged_mail_is_refused_only_when_it_is_that_mail(
    tmp_path: Path, fmt: str
) -> None:
    """A file whose name carried the hash of a purged message (Maildir ,H=<sha256>,
    <sha256>.eml) was refused as "this content was purged" whatever it held.  A purge records
    the sha256 of the message's lf form, so its lf export is still refused, and other mail
    under that name is imported, with a warning."""
    vault = new_vault(tmp_path / "vault")
    assert import_json(vault, str(write(tmp_path / "a.eml", A)))[0] == 0
    out = tmp_path / f"out-{fmt}"
    result = cli(vault, "export", "--format", fmt, "--out", str(out), "--line-endings", "lf")
    assert result.exit_code == 0, result.stderr
    for manifest in out.glob("manifest.json*"):
        manifest.unlink()  # the name alone names the original
    (exported,) = [p for p in out.rglob("*") if p.is_file() and sha(A) in p.name]
    assert exported.read_bytes() == A.replace(b"\r\n", b"\n")
    _purge_all(vault)
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        (detail,) = db.execute("SELECT detail FROM ledger WHERE kind = 'purge'").fetchone()
    assert json.loads(detail)["lf_sha256"] == sha(A.replace(b"\r\n", b"\n"))
    code, report = import_json(vault, str(out))
    assert (code, report["imported"]) == (1, 0)
    assert "is an lf export of" in report["rejected"][0]["reason"]
    exported.write_bytes(D)  # other mail under the purged message's name
    code, report = import_json(vault, str(out))
    assert (code, report["imported"], report["rejected"]) == (0, 1, [])
    assert "neither that message nor its lf form" in report["warnings"][0]["message"]
    assert sha(D) in catalog_set(vault)


def test_a_file_named_after_mail_purged_before_lf_forms_were_recorded(tmp_path: Path) -> None:
    """A purge without `lf_sha256` (older ones; an edited catalog) leaves the size: content
    too long or too short to be the lf form is imported, with a warning; content whose size
    fits is refused, saying how to import it if it is other mail."""
    vault = new_vault(tmp_path / "vault")
    assert import_json(vault, str(write(tmp_path / "a.eml", A)))[0] == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE messages SET purged_at='2026-01-01T00:00:00+00:00'")
    name = f"1.host,H={sha(A)}:2,S"
    unrelated = write(tmp_path / "md1" / "cur" / name, C + b"X" * len(A))
    code, report = import_json(vault, str(unrelated.parent.parent))
    assert (code, report["imported"]) == (0, 1)
    assert "neither that message nor its lf form" in report["warnings"][0]["message"]
    fits = write(tmp_path / "md2" / "cur" / name, A.replace(b"\r\n", b"\n")[:-1] + b"?")
    code, report = import_json(vault, str(fits.parent.parent))
    assert (code, report["imported"]) == (1, 0)
    assert "rename the file" in report["rejected"][0]["reason"]


def test_usage_errors(tmp_path: Path) -> None:
    vault = new_vault(tmp_path / "vault")
    unknown = write(tmp_path / "data.bin", b"\x00\x01")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    maildir = tmp_path / "Maildir"
    write(maildir / "cur" / "1.host:2,S", b"Subject: x\r\n\r\nx\r\n")
    cases = [
        (["--format", "eml", str(maildir)], "is a Maildir, not a directory of .eml files"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(unknown)], "cannot tell what"),
        ([str(empty_dir)], "cannot tell what"),
        (["--format", "maildir", str(unknown)], "needs a Maildir directory"),
        (["--format", "mbox", str(empty_dir)], "needs an mbox file"),
    ]
    for args, message in cases:
        result = cli(vault, "import", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1


def test_import_takes_the_vault_lock(tmp_path: Path) -> None:
    vault = new_vault(tmp_path / "vault")
    path = write(tmp_path / "a.eml", A)
    with open_vault(vault).write_lock("test"):
        result = cli(vault, "import", str(path))
    assert result.exit_code == 3 and "locked" in result.stderr
    assert catalog_set(vault) == set()


def test_import_parses_and_indexes_unless_told_not_to(tmp_path: Path) -> None:
    vault = new_vault(tmp_path / "vault")
    path = write(tmp_path / "a.eml", A)
    code, report = cli_json(vault, "import", str(path))
    assert code == 0 and report["index"] is not None and report["index"]["indexed"] == 1
    result = cli(vault, "search", "--count", "subject:a")
    assert result.stdout.strip() == "1"


def test_a_full_disk_while_indexing_still_reports_the_committed_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after the import committed, while parsing and indexing: the report
    still says what was imported, the indexing failure is one line, and `mailvault index`
    (which hits the same full disk) says so in one line with exit 3."""
    from mailvault import indexer

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(indexer, "_pipeline", full)
    vault = new_vault(tmp_path / "vault")
    paths = [str(write(tmp_path / f"{n}.eml", m)) for n, m in enumerate((A, C))]
    result = cli(vault, "import", *paths)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stdout.startswith("imported 2, duplicates 0, rejected 0")
    assert "indexing failed: the catalog could not be written while indexing" in result.stderr
    assert "free space" in result.stderr and "run `mailvault index`" in result.stderr
    assert catalog_set(vault) == {sha(A), sha(C)}
    result = cli(vault, "index")
    assert result.exit_code == 3 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("mailvault: error: the catalog could not be written")


def test_a_disk_error_no_code_expected_is_still_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's net: an OSError that escaped every library mapping is one line, exit 3."""
    import errno

    from mailvault.cli import export_cmd

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file")

    monkeypatch.setattr(export_cmd, "import_sources", full)
    vault = new_vault(tmp_path / "vault")
    result = cli(vault, "import", str(write(tmp_path / "a.eml", A)))
    assert result.exit_code == 3 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "mailvault: error: disk full while running `import` /somewhere/file; free space"
    )


def test_text_report(tmp_path: Path) -> None:
    vault = new_vault(tmp_path / "vault")
    data = b"junk\nFrom a@b Mon Jan  1 00:00:00 2001\nSubject: x\n\nx\n"
    result = cli(vault, "import", "--no-index", str(write(tmp_path / "m.mbox", data)))
    assert result.exit_code == 1
    assert result.stdout.startswith("imported 1, duplicates 0, rejected 1, skipped 0")
    assert "rejected: " in result.stderr and "at byte 0" in result.stderr


def test_text_report_escapes_file_names(tmp_path: Path) -> None:
    """A source's file names are anyone's bytes: one holding a line break, colours and an OSC 52
    clipboard write is printed escaped on its own line, not as a forged summary line."""
    evil = "notes\n\x1b[32mimported 999, rejected 0\x1b[0m\x1b]52;c;cm0gLXJmIH4K\x07\udce9"
    write(tmp_path / "emls" / "ok.eml", A)
    write(tmp_path / "emls" / f"{evil}.txt", b"x")  # skipped
    md = tmp_path / "md"
    write(md / "cur" / f"{evil}:2,S", b"")  # a warning: empty
    (md / "new").mkdir()
    box = write(
        tmp_path / "e\x1b[31m\nrejected: none.mbox",
        b"From x Mon Jan  1 00:00:00 2024\n",
    )
    vault = new_vault(tmp_path / "vault")
    result = cli(vault, "import", "--no-index", str(tmp_path / "emls"), str(md), str(box))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["rejected", "skipped", "warning"]
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    shown = "notes\\n\\x1b[32mimported 999, rejected 0\\x1b[0m\\x1b]52;c;cm0gLXJmIH4K\\x07\\xe9"
    assert f"/{shown}.txt: not a .eml file" in lines[1]
    assert f"/{shown}:2,S: empty" in lines[2]
    assert "/e\\x1b[31m\\nrejected: none.mbox at byte 32: an empty message" in lines[0]


@pytest.mark.parametrize("size", [5 * 1024 * 1024])
def test_big_mbox_message_streams(tmp_path: Path, size: int) -> None:
    line = b"x" * 75 + b"\n"
    body = line * (size // len(line)) + b">From the middle\n"
    data = b"From a@b Mon Jan  1 00:00:00 2001\nSubject: big\n\n" + body
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(write(tmp_path / "big.mbox", data)))
    expected = b"Subject: big\n\n" + body[: -len(b">From the middle\n")] + b"From the middle\n"
    assert code == 0 and catalog_set(vault) == {sha(expected)}


def test_a_truncated_export_is_reported_not_imported_short(tmp_path: Path) -> None:
    crafted = crafted_messages()[:5]
    vault, box, entries = _exported_mbox(tmp_path, crafted)
    cut = entries[3]["offset"] + entries[3]["length"] // 2
    box.write_bytes(box.read_bytes()[:cut])  # lose the end of message 4 and all of message 5
    fresh = new_vault(tmp_path / "fresh")
    code, report = import_json(fresh, str(box))
    assert code == 1
    assert [r["offset"] for r in report["rejected"]] == [entries[3]["offset"], entries[4]["offset"]]
    assert catalog_set(fresh) == {e["sha256"] for e in entries[:3]}


def test_an_edit_that_shifts_later_messages_rejects_only_the_edited_one(tmp_path: Path) -> None:
    """A line inserted into one message moves every later one off its manifest offset: those
    are still found (by their From_ lines) and imported, so the report warns about them and
    rejects only what was really not stored."""
    crafted = crafted_messages()[:6]
    vault, box, entries = _exported_mbox(tmp_path, crafted)
    victim = entries[1]
    data = box.read_bytes()
    at = victim["offset"] + victim["length"] // 2
    box.write_bytes(data[:at] + b"INSERTED LINE\n" + data[at:])
    fresh = new_vault(tmp_path / "fresh")
    code, report = import_json(fresh, str(box))
    assert code == 1
    stored = catalog_set(fresh)
    assert stored >= {e.get("exported_sha256", e["sha256"]) for e in entries[2:]}
    assert victim["sha256"] not in stored
    rejected = [r for r in report["rejected"] if r["offset"] in {e["offset"] for e in entries}]
    assert [r["offset"] for r in rejected] == [victim["offset"]]
    moved = [w for w in report["warnings"] if "found at byte" in w["message"]]
    assert sorted(w["offset"] for w in moved) == [e["offset"] for e in entries[2:]]


def test_the_entries_file_alone_is_enough_to_follow_the_manifest(tmp_path: Path) -> None:
    crafted = crafted_messages()[:6]
    vault, box, _ = _exported_mbox(tmp_path, crafted)
    (tmp_path / "out.mbox.manifest.json").unlink()
    fresh = new_vault(tmp_path / "fresh")
    code, report = import_json(fresh, str(box))
    assert code == 0 and catalog_set(fresh) == {sha(m) for m in crafted}  # final \n kept exact
    assert [w["message"] for w in report["warnings"]] == [
        "out.mbox.manifest.json is missing; following out.mbox.manifest.jsonl alone (as "
        "written by mailvault export: mboxrd)"
    ]


def test_a_manifest_that_is_not_utf8_is_a_warning_and_the_import_goes_on(tmp_path: Path) -> None:
    """One byte that is not UTF-8 in a manifest line (or in the summary) is an unreadable
    manifest, as bad JSON is: a warning, and the rest read by its From_ lines; it was a
    UnicodeDecodeError traceback with nothing imported."""
    mail = [A, C, D, A.replace(b"alpha", b"omega")]
    _, box, _ = _exported_mbox(tmp_path, mail)
    entries = Path(f"{box}.manifest.jsonl")
    lines = entries.read_bytes().splitlines(keepends=True)
    entries.write_bytes(b"".join([*lines[:2], b'{"offset": 1, "x": "\xff"}\n', *lines[2:]]))
    code, report = import_json(new_vault(tmp_path / "a"), str(box))
    assert code == 0 and report["imported"] == 4, report
    (warning,) = [w["message"] for w in report["warnings"]]
    assert warning.startswith("out.mbox.manifest.jsonl: unreadable manifest line ('utf-8' codec")
    assert warning.endswith("; the manifest was ignored from here")
    entries.write_bytes(b"".join(lines))
    summary = Path(f"{box}.manifest.json")
    summary.write_bytes(summary.read_bytes().replace(b'"mbox"', b'"mbox\xff"', 1))
    code, report = import_json(new_vault(tmp_path / "b"), str(box))
    assert code == 0 and report["imported"] == 4, report
    assert [w["message"] for w in report["warnings"]] == [
        "out.mbox.manifest.json is unreadable or not a mailvault export manifest (not UTF-8 "
        "JSON of its schema); the manifest was ignored and the file read by its From_ lines"
    ]


def test_a_deleted_message_rejects_only_itself_when_the_others_are_the_same_size(
    tmp_path: Path,
) -> None:
    """Messages of equal size: with one cut out of the mbox, every later message lands exactly
    on the manifest offset of another entry.  Each is a message the manifest lists, so it is
    imported (with a warning); only the one really missing is rejected."""
    mails = [b"From: a@b.c\r\nSubject: m%02d\r\n\r\nthe same size\r\n" % i for i in range(8)]
    vault, box, entries = _exported_mbox(tmp_path, mails)
    data = box.read_bytes()
    start = data.rindex(b"From ", 0, entries[2]["offset"])  # its From_ line
    end = data.rindex(b"From ", 0, entries[3]["offset"])
    box.write_bytes(data[:start] + data[end:])
    fresh = new_vault(tmp_path / "fresh")
    code, report = import_json(fresh, str(box))
    assert code == 1 and report["imported"] == 7
    assert catalog_set(fresh) == {sha(m) for m in mails} - {entries[2]["sha256"]}
    assert [r["offset"] for r in report["rejected"]] == [entries[2]["offset"]]  # the lost one
    assert "no longer has" in report["rejected"][0]["reason"]


@pytest.mark.parametrize("line_endings", ["crlf", "lf"])
def test_any_deleted_message_rejects_only_itself(tmp_path: Path, line_endings: str) -> None:
    """Deleting a message moves the next one to exactly its manifest offset, where the
    manifest gives another length: the manifest's span must be checked before it is trusted,
    or the split goes wrong and intact messages are lost.  Messages of other sizes, some without
    a final line break (stored exactly, with the manifest's help, wherever they moved to)."""
    mails = crafted_messages()[:6] + [
        b"From: a@b.c\r\nSubject: n%d\r\n\r\n%s\r\n" % (i, b"x" * (i * 37)) for i in range(5)
    ]
    vault, box, entries = _exported_mbox(tmp_path, mails, line_endings)
    exported = [e.get("exported_sha256", e["sha256"]) for e in entries]
    data = box.read_bytes()
    for k in range(len(entries)):
        start = data.rindex(b"From ", 0, entries[k]["offset"])
        end = data.rindex(b"From ", 0, entries[k + 1]["offset"]) if k + 1 < len(entries) else None
        edited = tmp_path / f"edited{k}.mbox"
        edited.write_bytes(data[:start] + (data[end:] if end is not None else b""))
        for suffix in (".manifest.json", ".manifest.jsonl"):
            Path(f"{edited}{suffix}").write_bytes(Path(f"{box}{suffix}").read_bytes())
        fresh = new_vault(tmp_path / f"fresh{k}")
        code, report = import_json(fresh, str(edited))
        assert catalog_set(fresh) == set(exported) - {exported[k]}, k
        assert (code, [r["offset"] for r in report["rejected"]]) == (1, [entries[k]["offset"]])


def test_an_unreadable_folder_is_rejected_and_the_rest_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder the importing user may not read (.Sent/new, chmod 000; root reads anything, so
    the refusal is simulated) is one rejected entry with its reason; the other folders are
    imported and committed, and nothing is left staged in the vault."""
    import os as os_module

    md = tmp_path / "Maildir"
    write(md / "cur" / "1:2,S", A)
    write(md / ".Sent" / "new" / "2", C)
    write(md / ".Archive" / "cur" / "3:2,S", D)
    scandir = os_module.scandir

    def refusing(path: object) -> object:
        if str(path).endswith(".Sent/new"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os_module, "scandir", refusing)
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(md))
    assert code == 1 and report["imported"] == 2
    (rejected,) = report["rejected"]
    assert (
        rejected["path"].endswith(".Sent/new")
        and "cannot read this directory" in rejected["reason"]
    )
    assert catalog_set(vault) == {sha(A), sha(D)}
    assert os_module.listdir(vault / "tmp") == []


def test_eml_named_files_inside_maildirs_are_still_a_maildir_tree(tmp_path: Path) -> None:
    """A directory of Maildirs (no cur/ of its own) whose messages include one named *.eml:
    the auto-detection must not take it for a directory of .eml files and skip the Maildirs."""
    write(tmp_path / "Mail" / "INBOX" / "cur" / "1:2,S", A)
    write(tmp_path / "Mail" / "INBOX" / "cur" / "forwarded.eml", C)
    write(tmp_path / "Mail" / "Sent" / "cur" / "2:2,S", D)
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(tmp_path / "Mail"))
    assert code == 0 and report["sources"][0]["format"] == "maildir"
    assert catalog_set(vault) == {sha(A), sha(C), sha(D)}


def test_a_file_that_changes_while_it_is_read_is_rejected(tmp_path: Path) -> None:
    """Stored half old, half new, it would match neither version: rejected, so that the next
    import reads it whole."""
    from mailvault.importer._model import file_chunks
    from mailvault.store import READ_CHUNK

    path = write(tmp_path / "big.eml", b"Subject: x\r\n\r\n" + b"a" * (3 * READ_CHUNK))
    chunks = file_chunks(path)
    next(chunks)
    with path.open("ab") as f:  # a mail client saving it again
        f.write(b"more")
    with pytest.raises(OSError, match="changed while it was read"):
        list(chunks)


def test_a_full_disk_leaves_no_staged_files_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up when a batch is published: exit 3, one line, and the batch's staged
    files are removed (left in tmp/, they kept the disk full for the next run)."""
    import errno as errno_module
    import os as os_module

    from mailvault.errors import disk_error
    from mailvault.store import BlobStore

    def full(self: BlobStore, staged: object) -> list[bool]:
        raise disk_error(OSError(errno_module.ENOSPC, "No space left on device"), "syncing")

    monkeypatch.setattr(BlobStore, "publish", full)
    vault = new_vault(tmp_path / "vault")
    paths = [str(write(tmp_path / f"{n}.eml", m)) for n, m in enumerate((A, C, D))]
    result = cli(vault, "import", "--no-index", *paths)
    assert result.exit_code == 3 and result.stderr.count("\n") == 1, result.stderr
    assert os_module.listdir(vault / "tmp") == []


def test_an_mbox_another_program_is_writing_is_not_read_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MDA or mail client holds flock(LOCK_EX) while it appends: the import waits for it
    (LOCK_WAIT), and if it does not let go, rejects the file instead of storing a
    half-delivered message."""
    import fcntl

    from mailvault.importer import mbox

    monkeypatch.setattr(mbox, "LOCK_WAIT", 0.3)
    box = write(tmp_path / "spool.mbox", b"From a@b Mon Jan  1 00:00:00 2024\n" + B)
    vault = new_vault(tmp_path / "vault")
    with box.open("rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, report = import_json(vault, str(box))
    assert code == 1 and report["messages"] == 0
    assert "locked by another program" in report["rejected"][0]["reason"]
    code, report = import_json(vault, str(box))  # let go: imported
    assert code == 0 and report["imported"] == 1


def test_an_edit_after_a_deletion_is_imported_with_a_warning_saying_so(tmp_path: Path) -> None:
    """A message deleted, and a later one edited: every later message is off its manifest
    offset, so the edited one cannot be told from mail another program added.  It is stored
    (nothing dropped) and the report says so at its offset; the manifest entries whose exact
    content is gone (the deleted one, the original of the edited one) are rejected."""
    mails = [b"From: a@b.c\r\nSubject: n%d\r\n\r\n%s\r\n" % (i, b"y" * (i * 41)) for i in range(7)]
    vault, box, entries = _exported_mbox(tmp_path, mails)
    data = bytearray(box.read_bytes())
    data[entries[4]["offset"] + 30] ^= 0x20  # a byte of message 4's body
    start = bytes(data).rindex(b"From ", 0, entries[1]["offset"])
    end = bytes(data).rindex(b"From ", 0, entries[2]["offset"])
    box.write_bytes(bytes(data[:start] + data[end:]))
    fresh = new_vault(tmp_path / "fresh")
    code, report = import_json(fresh, str(box))
    assert code == 1 and report["imported"] == 6
    stored = catalog_set(fresh)
    assert stored >= {e["sha256"] for i, e in enumerate(entries) if i not in (1, 4)}
    assert entries[1]["sha256"] not in stored and entries[4]["sha256"] not in stored
    assert sorted(r["offset"] for r in report["rejected"]) == [
        entries[1]["offset"],
        entries[4]["offset"],
    ]
    unlisted = [w for w in report["warnings"] if "does not list" in w["message"]]
    assert len(unlisted) == 1


@pytest.mark.parametrize("fmt", ["maildir", "mbox", "eml"])
def test_an_lf_export_imported_back_is_a_duplicate_of_its_original(
    tmp_path: Path, fmt: str
) -> None:
    """Fetched mail is CRLF and Maildir/mbox exports default to lf: importing such an export
    back into its vault used to store every CRLF message a second time, as its LF copy.  Now
    content that is the lf form of the live message its name or manifest entry names (checked
    by converting the stored original, not trusted) is a duplicate of that original; its
    provenance is recorded against the original, and nothing new is stored."""
    vault, out = _lf_export_without_manifest(tmp_path, fmt, (A, B, C))
    code, report = import_json(vault, "--account", "again", str(out))
    assert (code, report["imported"], report["duplicates"]) == (0, 0, 3), report
    assert report["warnings"] == [] and report["rejected"] == []
    assert catalog_set(vault) == {sha(A), sha(B), sha(C)}
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        rows = db.execute("SELECT sha256 FROM imports WHERE account = 'again'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(sha(m) for m in (A, B, C))
    # Into another vault, which does not hold the originals, the lf copies are new content.
    other = new_vault(tmp_path / "other")
    code, report = import_json(other, str(out))
    assert (code, report["imported"], report["duplicates"]) == (0, 3, 0)
    assert catalog_set(other) == {sha(m.replace(b"\r\n", b"\n")) for m in (A, B, C)}
    # The originals and their export in one import: the originals come first, and the export
    # is still recognised (the originals' batch is committed before it is read back).
    third = new_vault(tmp_path / "third")
    paths = [str(tmp_path / f"{n}.eml") for n in range(3)]  # the originals the helper wrote
    code, report = import_json(third, *paths, str(out))
    assert (code, report["imported"], report["duplicates"]) == (0, 3, 3)
    assert catalog_set(third) == {sha(A), sha(B), sha(C)}


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_a_file_that_only_claims_to_be_an_export_is_imported_as_new(
    tmp_path: Path, fmt: str
) -> None:
    """A name that says H=<sha256 of a live message> but content that is neither that message
    nor its lf form (edited since, or a forged name) is new content, stored with a warning."""
    vault = new_vault(tmp_path / "vault")
    assert import_json(vault, str(write(tmp_path / "a.eml", A)))[0] == 0
    edited = A.replace(b"\r\n", b"\n").replace(b"alpha", b"ALPHA")
    if fmt == "maildir":
        path = write(
            tmp_path / "md" / "cur" / f"1.M1P1.host,S={len(edited)},H={sha(A)}:2,S", edited
        )
        source = path.parent.parent
    else:
        source = write(tmp_path / "eml" / f"{sha(A)}.eml", edited).parent
    code, report = import_json(vault, str(source))
    assert (code, report["imported"], report["duplicates"]) == (0, 1, 0), report
    assert len(report["warnings"]) == 1 and sha(A) in report["warnings"][0]["message"]
    assert catalog_set(vault) == {sha(A), sha(edited)}


def test_a_manifest_that_only_claims_an_original_is_imported_as_new(tmp_path: Path) -> None:
    """The same for an mbox manifest: an entry whose sha256 names a live message and whose
    exported_sha256 matches the bytes, but the bytes are not that message's lf form."""
    vault = new_vault(tmp_path / "vault")
    assert import_json(vault, str(write(tmp_path / "a.eml", A)))[0] == 0
    out = tmp_path / "box.mbox"
    assert cli(vault, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    data = out.read_bytes().replace(b"alpha", b"ALPHA")
    out.write_bytes(data)
    entries = Path(f"{out}.manifest.jsonl")
    line = manifest_lines(entries)[0]
    edited = A.replace(b"\r\n", b"\n").replace(b"alpha", b"ALPHA")
    line["exported_sha256"] = sha(edited)
    entries.write_text(json.dumps(line) + "\n", encoding="utf-8")
    code, report = import_json(vault, str(out))
    assert (code, report["imported"], report["duplicates"]) == (0, 1, 0), report
    assert len(report["warnings"]) == 1 and sha(A) in report["warnings"][0]["message"]
    assert catalog_set(vault) == {sha(A), sha(edited)}


def test_a_crlf_content_length_in_an_lf_mbox_does_not_merge_messages(tmp_path: Path) -> None:
    """A CRLF message with a correct Content-Length, exported as an lf mbox and read back
    without the manifest: the length (now too long by one byte a line) ran past the message
    and, ending on a later From_ line by chance, swallowed the next message into it, silently."""
    small = (
        b"From: Bob <b@x.org>\nSubject: B\nDate: Mon, 3 Jun 2024 10:00:00 +0000\n"
        b"Message-ID: <b@cl>\n\nI am message B\n"
    )
    separator = b"From b@x.org Mon Jun  3 10:00:00 2024\n"
    lines = 1 + len(separator) + len(small) + 1  # the overrun ends where B does
    body = b"".join(b"line %03d\r\n" % i for i in range(lines))
    big = (
        b"From: Alice <a@x.org>\r\nSubject: A\r\nDate: Sun, 2 Jun 2024 10:00:00 +0000\r\n"
        b"Message-ID: <a@cl>\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    source = new_vault(tmp_path / "source")
    for name, raw in (("a", big), ("b", small)):
        assert import_json(source, str(write(tmp_path / f"{name}.eml", raw)))[0] == 0
    out = tmp_path / "out.mbox"
    result = cli(source, "export", "--format", "mbox", "--no-manifest", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    vault = new_vault(tmp_path / "vault")
    code, report = import_json(vault, str(out))
    assert (code, report["imported"]) == (0, 2), report
    assert any("CRLF line ends" in w["message"] for w in report["warnings"]), report
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT sha256 FROM messages")}
    assert stored == {sha(big.replace(b"\r\n", b"\n")), sha(small)}
