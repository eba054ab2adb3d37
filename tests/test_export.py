"""`mailvault export`: Maildir, mbox and EML targets, manifests, refusals and failures.

Independent readers are the oracles: the standard library's ``mailbox.Maildir`` and
``mailbox.mbox`` (mboxrd unquoting applied here, since the stdlib does not unquote), plain file
reads and ``hashlib`` for the manifests.
"""

from __future__ import annotations

import hashlib
import json
import mailbox
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mailvault.export.maildir import is_maildir
from mailvault.resources import json_schema
from mailvault.store import BlobStore
from tests.test_export_kit import (
    add_messages,
    cli,
    cli_json,
    manifest_lines,
    new_vault,
    read_stdlib_mbox,
    sha,
    to_lf,
    unquote_mboxrd,
    validate_manifest,
)


def expected_bytes(raw: bytes, line_endings: str) -> bytes:
    return to_lf(raw) if line_endings == "lf" else raw


# -- Maildir ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line_endings", ["crlf", "lf"])
def test_maildir_export_is_read_exactly_by_stdlib_mailbox(
    tmp_path: Path, vault: Path, crafted: list[bytes], line_endings: str
) -> None:
    out = tmp_path / "md"
    result = cli(
        vault, "export", "--format", "maildir", "--out", str(out), "--line-endings", line_endings
    )
    assert result.exit_code == 0, result.output
    box = mailbox.Maildir(out, factory=None, create=False)
    got = sorted(box.get_bytes(key) for key in box.iterkeys())
    assert got == sorted(expected_bytes(m, line_endings) for m in crafted)
    assert not os.listdir(out / "tmp") and not os.listdir(out / "new")
    for name in os.listdir(out / "cur"):
        assert name.endswith(":2,S")
        digest = name.split(",H=")[1][:64]
        data = (out / "cur" / name).read_bytes()
        assert f",S={len(data)}," in name
        original = next(m for m in crafted if sha(m) == digest)
        assert data == expected_bytes(original, line_endings)


def test_maildir_reexport_adds_only_what_is_missing(tmp_path: Path, crafted: list[bytes]) -> None:
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:5])
    out = tmp_path / "md"
    code, first = cli_json(root, "export", "--format", "maildir", "--out", str(out))
    assert (code, first["added"], first["skipped"]) == (0, 5, 0)
    before = set(os.listdir(out / "cur"))
    add_messages(root, crafted[5:8])
    code, second = cli_json(root, "export", "--format", "maildir", "--out", str(out))
    assert (code, second["count"], second["added"], second["skipped"]) == (0, 8, 3, 5)
    after = set(os.listdir(out / "cur"))
    assert before < after and len(after) == 8
    summary, entries = validate_manifest(out / "manifest.json")
    assert len(entries) == 8 and {e["path"] for e in entries} == {f"cur/{n}" for n in after}
    # A copy changed after the export is not trusted: a fresh copy is written, and said so.
    victim = out / "cur" / sorted(before)[0]
    victim.write_bytes(b"tampered\n")
    code, third = cli_json(root, "export", "--format", "maildir", "--out", str(out))
    assert (code, third["added"], third["skipped"]) == (0, 1, 7)
    assert any("does not match" in w for w in third["warnings"])
    assert victim.read_bytes() == b"tampered\n"  # never deleted: it is not ours any more
    # A different line-ending form into the same Maildir is refused, not mixed.
    result = cli(root, "export", "--format", "maildir", "--out", str(out), "--line-endings", "crlf")
    assert result.exit_code == 3 and "--line-endings lf" in result.stderr


def test_warnings_about_files_in_the_target_are_escaped(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """A file already in the target is named by whoever put it there (a mail client renames
    Maildir files): its name in a warning holds no line break or terminal escape."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:2])
    out = tmp_path / "md"
    assert cli(root, "export", "--format", "maildir", "--out", str(out)).exit_code == 0
    victim = sorted((out / "cur").iterdir())[0]
    renamed = victim.with_name("\x1b]52;c;eA==\x07\n\x1b[31mwarning: forged\udce9" + victim.name)
    victim.rename(renamed)
    renamed.write_bytes(b"tampered\n")
    result = cli(root, "export", "--format", "maildir", "--out", str(out))
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: cur/\\x1b]52;c;eA==\\x07\\n\\x1b[31mwarning: forged\\xe9"), (
        line
    )
    assert "content does not match" in line
    summary = json.loads((out / "manifest.json").read_bytes())
    assert summary["warnings"][0].startswith(f"cur/{renamed.name}: content does not match")


def test_a_manifest_line_that_is_not_utf8_is_passed_over_by_the_next_export(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """A Maildir's manifest keeps the entries of earlier exports: a line of it with a byte that
    is not UTF-8 is a damaged line, passed over as bad JSON is (it was a traceback)."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:3])
    out = tmp_path / "md"
    assert cli(root, "export", "--format", "maildir", "--out", str(out)).exit_code == 0
    with (out / "manifest.jsonl").open("ab") as f:
        f.write(b'{"sha256": "\xff"}\n')
    code, again = cli_json(root, "export", "--format", "maildir", "--out", str(out))
    assert (code, again["added"], again["skipped"]) == (0, 0, 3)
    _, entries = validate_manifest(out / "manifest.json")
    assert len(entries) == 3


# -- mbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_endings", ["crlf", "lf"])
def test_mbox_export_is_read_exactly_by_stdlib_mailbox(
    tmp_path: Path, vault: Path, crafted: list[bytes], line_endings: str
) -> None:
    out = tmp_path / "all.mbox"
    code, summary = cli_json(
        vault, "export", "--format", "mbox", "--out", str(out), "--line-endings", line_endings
    )
    assert code == 0 and summary["count"] == len(crafted)
    got = read_stdlib_mbox(out)
    assert len(got) == len(crafted)  # every body "From " line was quoted, none splits a message
    expected = []
    for raw in crafted:
        data = expected_bytes(raw, line_endings)
        # The stdlib reader cannot know a message had no final line break: it ends with one.
        expected.append(data if data.endswith(b"\n") else data + b"\n")
    assert sorted(unquote_mboxrd(m) for m in got) == sorted(expected)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    # The From_ lines carry the envelope sender and the date in asctime form.
    text = out.read_bytes()
    assert b"\nFrom bounce@example.com Fri Jul  8 10:08:34 2011\n" in b"\n" + text
    assert b"\nFrom MAILER-DAEMON " in text  # Return-Path: <>


def test_mbox_manifest_offsets_cut_out_each_message(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    out = tmp_path / "x.mbox"
    assert (
        cli(
            vault, "export", "--format", "mbox", "--out", str(out), "--line-endings", "crlf"
        ).exit_code
        == 0
    )
    summary, entries = validate_manifest(tmp_path / "x.mbox.manifest.json")
    data = out.read_bytes()
    by_digest = {sha(m): m for m in crafted}
    assert summary["total_bytes"] == sum(e["length"] for e in entries)
    for entry in entries:
        cut = data[entry["offset"] : entry["offset"] + entry["length"]]
        assert entry["size"] == entry["length"]
        assert unquote_mboxrd(cut) == by_digest[entry["sha256"]]
        assert sha(unquote_mboxrd(cut)) == entry["sha256"]
        from_line = data[: entry["offset"]].rsplit(b"\n", 2)[-2]
        assert from_line.startswith(b"From ") and b"\r" not in from_line


def test_mbox_refuses_an_existing_target_unless_append(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:3])
    out = tmp_path / "box"
    assert cli(root, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    original = out.read_bytes()
    add_messages(root, crafted[3:5])  # (the same selection again would be that export's)
    result = cli(root, "export", "--format", "mbox", "--out", str(out))
    assert result.exit_code == 3
    assert "already exists; choose a new --out" in result.stderr
    assert "pass --append" not in result.stderr and result.stderr.count("\n") == 1
    assert out.read_bytes() == original
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    append = {k: v for k, v in summary["append"].items() if k != "run"}
    assert code == 0 and append == {"offset": len(original), "previous_entries": 3}
    assert out.read_bytes().startswith(original)
    summary, entries = validate_manifest(tmp_path / "box.manifest.json")
    assert len(entries) == 3 + 5
    assert len(read_stdlib_mbox(out)) == 8
    data = out.read_bytes()
    for entry in entries:
        cut = data[entry["offset"] : entry["offset"] + entry["length"]]
        assert sha(unquote_mboxrd(cut)) == entry.get("exported_sha256", entry["sha256"])


def test_append_carries_over_a_manifest_with_a_byte_that_is_not_utf8(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """An edited manifest with a byte that is not UTF-8 made --append crash with a
    UnicodeDecodeError traceback before it wrote anything."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:3])
    out = tmp_path / "box"
    assert cli(root, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    entries = tmp_path / "box.manifest.jsonl"
    entries.write_bytes(entries.read_bytes().replace(b'"sha256"', b'"sha\xff"', 1))
    add_messages(root, crafted[3:5])
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    assert code == 0 and summary["append"]["previous_entries"] == 3, summary
    lines = entries.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 + 5 and '"sha\ufffd"' in lines[0]  # the whole vault, appended


def test_append_refuses_a_file_that_is_not_an_mbox(tmp_path: Path, vault: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_bytes(b"just some notes\n")
    result = cli(vault, "export", "--format", "mbox", "--out", str(out), "--append")
    assert result.exit_code == 3 and "not an mbox" in result.stderr
    assert out.read_bytes() == b"just some notes\n"


# -- EML -------------------------------------------------------------------------------------


def test_eml_export_writes_exact_bytes_named_by_sha256(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    out = tmp_path / "eml"
    code, summary = cli_json(vault, "export", "--format", "eml", "--out", str(out))
    assert code == 0 and summary["line_endings"] == "crlf"
    for raw in crafted:
        assert (out / f"{sha(raw)}.eml").read_bytes() == raw
    _, entries = validate_manifest(out / "manifest.json")
    for entry in entries:
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        assert "exported_sha256" not in entry
    code, again = cli_json(vault, "export", "--format", "eml", "--out", str(out))
    assert (code, again["added"], again["skipped"]) == (0, 0, len(crafted))
    # A damaged copy is replaced in place (the name is the content's hash).
    victim = out / f"{sha(crafted[0])}.eml"
    victim.write_bytes(b"broken")
    code, third = cli_json(vault, "export", "--format", "eml", "--out", str(out))
    assert (code, third["added"]) == (0, 1) and victim.read_bytes() == crafted[0]


def test_lf_manifest_records_the_exported_hash(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    out = tmp_path / "eml-lf"
    code, _ = cli_json(
        vault, "export", "--format", "eml", "--out", str(out), "--line-endings", "lf"
    )
    assert code == 0
    _, entries = validate_manifest(out / "manifest.json")
    for entry in entries:
        data = (out / entry["path"]).read_bytes()
        assert sha(data) == entry["exported_sha256"]
        assert entry["size"] == len(data)
        assert data == to_lf(next(m for m in crafted if sha(m) == entry["sha256"]))


# -- selection -------------------------------------------------------------------------------


def test_account_selection_uses_import_provenance(tmp_path: Path, crafted: list[bytes]) -> None:
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:2])
    src = tmp_path / "src"
    src.mkdir()
    for i, raw in enumerate(crafted[2:5]):
        (src / f"{i}.eml").write_bytes(raw)
    assert cli(root, "import", str(src), "--account", "legacy", "--no-index").exit_code == 0
    out = tmp_path / "legacy"
    code, summary = cli_json(
        root, "export", "--format", "eml", "--out", str(out), "--account", "legacy"
    )
    assert code == 0 and summary["account"] == "legacy" and summary["count"] == 3
    assert {p.name for p in out.glob("*.eml")} == {f"{sha(m)}.eml" for m in crafted[2:5]}
    result = cli(
        root, "export", "--format", "eml", "--out", str(tmp_path / "x"), "--account", "nope"
    )
    assert result.exit_code == 2 and "unknown account 'nope'" in result.stderr


def test_query_export_selects_the_search_hits(tmp_path: Path, crafted: list[bytes]) -> None:
    root = new_vault(tmp_path / "vault")
    src = tmp_path / "src"
    src.mkdir()
    for i, raw in enumerate(crafted[:4]):
        (src / f"{i}.eml").write_bytes(raw)
    assert cli(root, "import", str(src)).exit_code == 0  # parses and indexes
    out = tmp_path / "q"
    code, summary = cli_json(
        root, "export", "subject:quoting", "--format", "eml", "--out", str(out)
    )
    assert code == 0 and summary["query"] == "subject:quoting" and summary["count"] == 1
    assert [p.name for p in out.glob("*.eml")] == [f"{sha(crafted[0])}.eml"]
    assert summary["warnings"] == []
    code, summary = cli_json(
        root, "export", "nosuchwordanywhere", "--format", "mbox", "--out", str(tmp_path / "e")
    )
    assert code == 0 and summary["count"] == 0
    assert summary["warnings"] == ["nothing to export: the query matched no messages"]
    # mail imported without indexing cannot match a query: the export says so
    (src / "late.eml").write_bytes(b"From: a@example.com\r\nSubject: quoting late\r\n\r\nx\r\n")
    assert cli(root, "import", "--no-index", str(src / "late.eml")).exit_code == 0
    code, summary = cli_json(
        root, "export", "subject:quoting", "--format", "eml", "--out", str(tmp_path / "late")
    )
    # (exit 1: a migration script checking the exit code must not take it for the whole answer)
    assert (code, summary["ok"], summary["unindexed"], summary["count"]) == (1, False, 1, 1)
    assert summary["warnings"][0].startswith("1 archived messages are not indexed yet")


def test_export_is_recorded_in_the_audit_log(tmp_path: Path, vault: Path) -> None:
    out = tmp_path / "eml"
    assert cli(vault, "export", "--format", "eml", "--out", str(out)).exit_code == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        command, results, detail = db.execute(
            "SELECT command, results, detail FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    detail = json.loads(detail)
    assert command == "export" and detail["target"] == str(out)
    assert detail["stage"] == "finished"
    assert detail["manifest_sha256"] == sha((out / "manifest.json").read_bytes())


def test_an_export_is_audited_before_its_first_byte(
    tmp_path: Path, vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export that fails (or is killed) part-way has still left its audit entry: the
    "started" one is committed before the target is opened."""
    from mailvault.export import eml

    def broken(self: object) -> None:
        raise OSError(28, "No space left on device")

    out = tmp_path / "eml"
    monkeypatch.setattr(eml.EmlTarget, "open", broken)
    assert cli(vault, "export", "--format", "eml", "--out", str(out)).exit_code != 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        rows = db.execute("SELECT command, results, detail FROM audit ORDER BY seq").fetchall()
    command, results, detail = rows[-1]
    assert command == "export" and json.loads(detail)["stage"] == "started" and results > 0


def test_json_output_validates(tmp_path: Path, vault: Path) -> None:
    code, document = cli_json(vault, "export", "--format", "maildir", "--out", str(tmp_path / "m"))
    assert code == 0 and document["ok"] is True and document["target"] == str(tmp_path / "m")
    jsonschema.validate(document, json_schema("export-manifest.schema.json"))
    code, document = cli_json(
        vault, "export", "--format", "mbox", "--out", str(tmp_path / "b"), "--no-manifest"
    )
    assert code == 0 and document["manifest"] is None
    assert not (tmp_path / "b.manifest.json").exists()


# -- refusals and failures -------------------------------------------------------------------


def test_targets_of_the_wrong_kind_are_refused(tmp_path: Path, vault: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "photo.jpg").write_bytes(b"\xff\xd8")
    cases = [
        (["--format", "maildir", "--out", str(a_file)], "is a file"),
        (["--format", "eml", "--out", str(a_file)], "is a file"),
        (["--format", "maildir", "--out", str(stranger)], "not empty and not a Maildir"),
        (["--format", "eml", "--out", str(stranger)], "not empty and not an eml export"),
        (["--format", "mbox", "--out", str(stranger)], "is a directory"),
        (["--format", "eml", "--out", str(tmp_path / "e"), "--append"], "--append applies"),
        (["--format", "mbox", "--out", "-"], "--out - (standard output) is not supported"),
    ]
    for args, message in cases:
        result = cli(vault, "export", *args)
        assert result.exit_code in (2, 3), args
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert os.listdir(stranger) == ["photo.jpg"] and a_file.read_text() == "x"
    md = tmp_path / "md"
    assert cli(vault, "export", "--format", "maildir", "--out", str(md)).exit_code == 0
    result = cli(vault, "export", "--format", "eml", "--out", str(md))
    assert result.exit_code == 3 and "not an eml export" in result.stderr


@pytest.mark.parametrize("fmt", ["maildir", "mbox", "eml"])
def test_out_below_a_regular_file_is_a_one_line_error(
    tmp_path: Path, vault: Path, fmt: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for out in (blocker / "sub" / "target", blocker / "target"):  # the file: above, or parent
        result = cli(vault, "export", "--format", fmt, "--out", str(out))
        assert result.exit_code == 3
        assert result.stderr.count("\n") == 1 and "not a directory" in result.stderr, out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "vault"]


# argv: the file size limit, "pool" (force the worker pool even for a handful of messages, so
# that a worker's write is the one that fails) or "inline", then the mailvault arguments.
LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if sys.argv[2] == "pool":
        from mailvault.export import pipeline
        pipeline.INLINE_MAX = 1
        pipeline.TASK_MESSAGES = 2
        pipeline.worker_count = lambda: 2
    from mailvault.cli import main
    sys.argv = ["mailvault", *sys.argv[3:]]
    main()
    """
)


@pytest.mark.parametrize("mode", ["inline", "pool"])
@pytest.mark.parametrize("fmt", ["maildir", "mbox", "eml"])
def test_a_full_target_leaves_no_half_written_message(
    tmp_path: Path, vault: Path, crafted: list[bytes], fmt: str, mode: str
) -> None:
    """RLIMIT_FSIZE makes the target "full" even for root: writes past 1.5 MB fail (EFBIG),
    in the main process or in a worker."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LIMITED,
            str(1_500_000),
            mode,
            "--vault",
            str(vault),
            "export",
            "--format",
            fmt,
            "--out",
            str(out),
            "--line-endings",
            "crlf",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and "file too large" in proc.stderr
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    by_digest = {sha(m): m for m in crafted}
    if fmt == "mbox":
        assert not out.exists()
    elif fmt == "maildir":
        assert is_maildir(out) and os.listdir(out / "tmp") == []
        for name in os.listdir(out / "cur"):  # whatever is visible is complete
            assert (out / "cur" / name).read_bytes() == by_digest[name.split(",H=")[1][:64]]
    else:
        for path in out.glob("*.eml"):
            assert path.read_bytes() == by_digest[path.stem]
    assert not (out / "manifest.json").exists()


def test_a_full_target_on_append_truncates_back(tmp_path: Path, vault: Path) -> None:
    out = tmp_path / "box"
    out.write_bytes(b"From a@b Mon Jan  1 00:00:00 2001\nSubject: old\n\nold body\n")
    before = out.read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LIMITED,
            str(1_000_000),
            "inline",
            "--vault",
            str(vault),
            "export",
            "--format",
            "mbox",
            "--out",
            str(out),
            "--append",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and "file too large" in proc.stderr
    assert out.read_bytes() == before


def test_a_damaged_blob_stops_the_export(tmp_path: Path, crafted: list[bytes]) -> None:
    root = new_vault(tmp_path / "vault")
    digests = add_messages(root, crafted[:3])
    store = BlobStore(root, compress=False)
    blob = BlobStore(root).find(digests[1])
    assert blob is not None
    blob.unlink()
    raw_store = BlobStore(root, compress=False)
    w = raw_store.writer()
    w.write(b"not the original content")
    staged = w.finish()
    target = blob.with_name(digests[1])  # an uncompressed blob under the old name
    os.rename(staged.tmp_path, target)
    assert store.find(digests[1]) == target
    out = tmp_path / "out.mbox"
    result = cli(root, "export", "--format", "mbox", "--out", str(out))
    assert result.exit_code == 3 and "mailvault verify" in result.stderr
    assert not out.exists() and not list(tmp_path.glob("out.mbox*"))


def test_manifest_lines_are_in_selection_order(tmp_path: Path, vault: Path) -> None:
    out = tmp_path / "m"
    assert cli(vault, "export", "--format", "eml", "--out", str(out)).exit_code == 0
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        order = [
            r[0] for r in db.execute("SELECT sha256 FROM messages ORDER BY first_ingest_at, sha256")
        ]
    assert [e["sha256"] for e in manifest_lines(out / "manifest.jsonl")] == order


def test_append_keeps_one_line_ending_form(tmp_path: Path, vault: Path) -> None:
    out = tmp_path / "box"
    assert cli(vault, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    result = cli(
        vault, "export", "--format", "mbox", "--out", str(out), "--append", "--line-endings", "crlf"
    )
    assert result.exit_code == 3 and "--line-endings lf" in result.stderr
    assert out.read_bytes() == before


def _purge_behind_the_scenes(root: Path, digest: str) -> None:
    """What a `retention apply` running at the same time does to a message: its catalog row
    marked purged, then its blob removed (export and show take no vault lock)."""
    with sqlite3.connect(root / "catalog.sqlite") as db:
        db.execute(
            "UPDATE messages SET purged_at = '2026-01-01T00:00:00+00:00' WHERE sha256 = ?",
            (digest,),
        )
    path = BlobStore(root).find(digest)
    assert path is not None
    path.unlink()


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_a_message_purged_during_the_export_is_left_out_not_called_missing(
    tmp_path: Path, vault: Path, crafted: list[bytes], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention run purging a selected message before the export reached it made the
    export stop half-way with "blob ... is missing; run `mailvault verify`", exit 3."""
    from mailvault.export.selection import Selection

    listed = Selection.__iter__
    victim = sha(crafted[1])

    def purged_after_listing(self: Selection) -> Iterator[Any]:
        selected = list(listed(self))
        _purge_behind_the_scenes(vault, victim)
        yield from selected

    monkeypatch.setattr(Selection, "__iter__", purged_after_listing)
    code, report = cli_json(vault, "export", "--format", fmt, "--out", str(tmp_path / "out"))
    assert code == 0, report
    assert report["count"] == len(crafted) - 1
    assert any(victim in w and "purged" in w for w in report["warnings"]), report["warnings"]
    from mailvault.export.manifest import manifest_paths

    entries, _ = manifest_paths(fmt, tmp_path / "out")
    listed_ids = {entry["sha256"] for entry in manifest_lines(entries)}
    assert listed_ids == {sha(m) for m in crafted} - {victim}


def test_show_of_a_message_purged_while_it_is_shown_says_purged(
    vault: Path, crafted: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailvault.show

    checked = mailvault.show.require_not_purged
    victim = sha(crafted[0])
    calls: list[str] = []

    def then_purged(catalog_path: Path, digest: str) -> None:
        checked(catalog_path, digest)
        if not calls:
            _purge_behind_the_scenes(vault, victim)
        calls.append(digest)

    monkeypatch.setattr(mailvault.show, "require_not_purged", then_purged)
    result = cli(vault, "show", victim)
    assert result.exit_code == 2, result.output
    assert "is marked purged" in result.stderr and "missing" not in result.stderr


def _auditor_snippet(heading: str) -> str:
    """The shell commands docs/export.md gives an auditor after ``heading``, as written."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()
    after = doc[doc.index(heading) :]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_a_subset_exported_into_a_maildir_keeps_the_manifest_listing_everything(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    """An export of a few messages into a Maildir holding a full export replaced its manifest,
    which then listed those few, and the documented auditor check still passed."""
    out = tmp_path / "md"
    assert cli(vault, "export", "--format", "maildir", "--out", str(out)).exit_code == 0
    moved = next((out / "cur").iterdir())  # a mail client sets a flag: the name changes
    moved.rename(moved.with_name(moved.name + "F"))
    digest = sha(crafted[0])  # Message-ID: <crlf-1@example.com>
    assert cli(vault, "index").exit_code == 0
    code, summary = cli_json(
        vault, "export", "message-id:crlf-1@example.com", "--format", "maildir", "--out", str(out)
    )
    assert code == 0 and summary["count"] == 1, summary
    assert summary["earlier_entries"] == len(crafted) - 1
    entries = manifest_lines(out / "manifest.jsonl")
    assert sorted(e["sha256"] for e in entries) == sorted(sha(m) for m in crafted)
    assert entries[0]["sha256"] == digest
    validate_manifest(out / "manifest.json")
    check = _auditor_snippet("Maildir or EML, with the manifest")
    result = subprocess.run(["sh", "-c", check], cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result
    assert "count matches" in result.stdout and "lists every file" in result.stdout, result


def test_an_edited_eml_file_is_kept_aside_not_overwritten(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    """Re-exporting EML replaced a file edited after the export, so the edit was gone; and a
    note dropped into the directory was called "not an eml export"."""
    out = tmp_path / "eml"
    assert cli(vault, "export", "--format", "eml", "--out", str(out)).exit_code == 0
    edited = out / f"{sha(crafted[0])}.eml"
    edited.write_bytes(b"Subject: my notes\r\n\r\nedited\r\n")
    code, summary = cli_json(vault, "export", "--format", "eml", "--out", str(out))
    assert code == 0 and summary["added"] == 1, summary
    (kept,) = out.glob(f"{edited.name}.changed-*")
    assert kept.read_bytes() == b"Subject: my notes\r\n\r\nedited\r\n"
    assert edited.read_bytes() == crafted[0]
    assert any(kept.name in w for w in summary["warnings"]), summary["warnings"]
    assert cli(vault, "export", "--format", "eml", "--out", str(out)).exit_code == 0  # again
    (out / "notes.txt").write_text("mine\n")
    result = cli(vault, "export", "--format", "eml", "--out", str(out))
    assert result.exit_code == 3 and "'notes.txt'" in result.stderr, result.stderr
    assert "move that out" in result.stderr


def test_a_message_moved_into_a_maildir_folder_is_not_exported_again(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    """Re-export looked in cur/ and new/ only: a message a mail client had moved into a
    Maildir++ folder (.Archive/cur) was written a second time, a duplicate in the client."""
    out = tmp_path / "md"
    assert cli(vault, "export", "--format", "maildir", "--out", str(out)).exit_code == 0
    archive = out / ".Archive"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True)
    moved = next((out / "cur").iterdir())
    moved.rename(archive / "cur" / moved.name)
    code, summary = cli_json(vault, "export", "--format", "maildir", "--out", str(out))
    assert (code, summary["added"], summary["skipped"]) == (0, 0, len(crafted)), summary
    paths = {e["path"] for e in manifest_lines(out / "manifest.jsonl")}
    assert f".Archive/cur/{moved.name}" in paths


@pytest.mark.parametrize(
    ("fmt", "more"), [("mbox", ()), ("mbox", ("--append",)), ("maildir", ()), ("eml", ())]
)
def test_a_dangling_symlink_as_out_is_refused_in_one_line_naming_it(
    tmp_path: Path, fmt: str, more: tuple[str, ...]
) -> None:
    """--out naming a symbolic link to nothing: the mbox export failed with "Too many levels
    of symbolic links", the Maildir and eml ones called the link a file.  Every format now
    says what it is and what to do; nothing is created, the link is left alone."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, [b"Subject: one\r\n\r\nbody\r\n"])
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    result = cli(root, "export", "--format", fmt, "--out", str(link), *more)
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"mailvault: error: {link} is a symbolic link to {tmp_path / 'missing'}, which does "
        "not exist, and no export is created through a link; give --out that path instead, "
        "or remove the link\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "vault"]
    assert link.is_symlink() and not link.exists()


def test_a_symlink_to_an_mbox_is_followed_by_append_and_refused_as_new(tmp_path: Path) -> None:
    """Without --append an existing mbox is refused; through a symlink the refusal was
    "Too many levels of symbolic links".  With --append the link is followed, as a link to a
    Maildir or eml directory is."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, [b"Subject: one\r\n\r\nbody\r\n"])
    real = tmp_path / "real.mbox"
    real.write_bytes(b"From a@b Thu Jan  1 00:00:00 1970\n\nold\n\n")
    link = tmp_path / "link.mbox"
    link.symlink_to(real)
    result = cli(root, "export", "--format", "mbox", "--out", str(link))
    assert result.exit_code == 3
    assert result.stderr.startswith(f"mailvault: error: {link} already exists; choose a new")
    assert cli(root, "export", "--format", "mbox", "--out", str(link), "--append").exit_code == 0
    assert link.is_symlink() and real.read_bytes().count(b"\nFrom ") == 1
