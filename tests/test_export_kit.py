"""Helpers shared by the export, import and round-trip tests (this module holds no tests)."""

from __future__ import annotations

import hashlib
import json
import mailbox
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
from click.testing import Result

from mailvault.catalog import Committed, utcnow
from mailvault.resources import json_schema
from mailvault.vault import init_vault, open_vault
from tests.prereq import corpora_dir  # noqa: F401  (re-exported for the round-trip tests)
from tests.vaults import run_cli

MB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def read_stdlib_mbox(path: Path) -> list[bytes]:
    box = mailbox.mbox(path, factory=None, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


def unquote_mboxrd(data: bytes) -> bytes:
    """Reference mboxrd unquoting over a whole message (independent of the streaming code)."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def new_vault(root: Path) -> Path:
    init_vault(root)
    return root


def add_messages(root: Path, messages: Iterable[bytes], source: str = "test") -> list[str]:
    """Store messages the way fetch does: BlobWriter, publish, one catalog commit."""
    vault = open_vault(root)
    store = vault.store()
    staged = []
    for raw in messages:
        writer = store.writer()
        for i in range(0, len(raw), 300_000):
            writer.write(raw[i : i + 300_000])
        staged.append(writer.finish())
    store.publish(staged)
    catalog = vault.catalog()
    try:
        catalog.commit_messages(
            None, None, source, [Committed(s.digest, s.size, None, utcnow()) for s in staged]
        )
    finally:
        catalog.close()
    return [s.digest for s in staged]


def cli(vault: Path, *args: str) -> Result:
    return run_cli(vault, *args)


def cli_json(vault: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(vault, *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def catalog_set(root: Path) -> set[str]:
    with sqlite3.connect(root / "catalog.sqlite") as db:
        return {row[0] for row in db.execute("SELECT sha256 FROM messages")}


def manifest_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def validate_manifest(summary_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both manifest files valid per schemas/export-manifest.schema.json; returns them."""
    schema = json_schema("export-manifest.schema.json")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    jsonschema.validate(summary, schema)
    assert "sha256" not in summary
    entries = manifest_lines(summary_path.with_name(summary["entries"]))
    for entry in entries:
        jsonschema.validate(entry, schema)
        assert "schema" not in entry
    return summary, entries


def _pad_to(buf: bytearray, position: int, filler: bytes = b"z") -> None:
    """Append filler (in lines of 70 bytes) until len(buf) == position."""
    while len(buf) < position:
        room = position - len(buf)
        if room > 72:
            buf += filler * 70 + b"\r\n"
        else:
            buf += filler * room


def crafted_messages() -> list[bytes]:
    """Messages that are hard to export exactly.

    From_ and >From lines at line starts, CRLF / LF / bare CR / mixed endings, no final line
    break, NUL and 8-bit bytes, an empty header, odd envelope senders and dates, a header over
    the 1 MiB peek limit, and a big message with a CRLF and a ">From" across the 1 MiB chunk
    boundaries of the blob reader.
    """
    msgs = [
        b"Return-Path: <bounce@example.com>\r\nFrom: Alice <alice@example.com>\r\n"
        b"Date: Fri, 08 Jul 2011 12:08:34 +0200\r\nMessage-ID: <crlf-1@example.com>\r\n"
        b"Subject: quoting\r\n\r\nFrom the start\r\n>From quoted once\r\n>>From twice\r\n"
        b" From indented\r\nFrom: a header-looking body line\r\n>From\r\nFrom\r\nend\r\n",
        b"From: bob@example.com\nDate: Sat, 1 Jan 2000 00:00:00 -0000\nMessage-ID: <lf-2@x>\n"
        b"\nFrom here, LF only\n>From there\n\nFrom me Mon Jan  1 00:00:00 2001\nbye\n",
        b"From someone@example.com Mon Jan  1 00:00:00 2001\r\nFrom: x@example.com\r\n"
        b"Message-ID: <starts-with-from-line@x>\r\n\r\nbody\r\n",
        b"From: nonl@example.com\r\nMessage-ID: <no-final-newline@x>\r\n\r\nno line break at end",
        b"From: nonl2@example.com\r\n\r\nends in a quoted line\r\n>From",
        b"Subject: \xe9t\xe9 8-bit\r\nFrom: raw@example.com\r\nDate: garbage date\r\n\r\n"
        b"bare\rCR and NUL\x00 and \xff\xfe bytes\r\n\r\r\n",
        b"\r\nno header at all, just a body\r\nFrom nowhere\r\n",
        b'Return-Path: <>\r\nFrom: "Quoted Name" <q@example.com>\r\n\r\nbounce\r\n',
        b"From: weird <a b@example.com>\r\nMessage-ID: no-angle-brackets@x\r\n\r\nx\r\n",
        b"Content-Length: 5\r\nFrom: cl@example.com\r\n\r\nmore than five bytes\r\n"
        b"From liar Mon Jan  1 00:00:00 2001\r\n",
        b"\r\n",
        b"X: y\r\n\r\nmixed\nline\r\nendings\n\r\n",
    ]
    big_header = bytearray(b"From: big-header@example.com\r\n")
    while len(big_header) < MB + 200_000:
        big_header += b"X-Filler: " + b"h" * 90 + b"\r\n"
    big_header += b"Date: Tue, 2 Feb 2021 02:02:02 +0000\r\n\r\nbody after a huge header\r\n"
    msgs.append(bytes(big_header))
    big = bytearray(b"From: big@example.com\r\nMessage-ID: <big@x>\r\n\r\n")
    _pad_to(big, MB - 1)
    big += b"\r\n"  # CR is the last byte of the first 1 MiB chunk, LF the first of the next
    _pad_to(big, 2 * MB - 3)
    big += b"\r\n>From across the second boundary\r\n"  # '>' at 2 MiB - 1
    _pad_to(big, 3 * MB - 2)
    big += b"\nFrom across the third boundary\r\n"
    _pad_to(big, 3 * MB + 500)
    big += b"\r\nthe end\r\n"
    msgs.append(bytes(big))
    return msgs


# The mailbox files of the corpora, and how many messages each holds (see the corpora README).
MBOX_COUNTS = {
    "mime4j/mbox-rlug/mbox.rlug": 5,
    "mimekit/mbox/content-length.mbox.txt": 29,
    "mimekit/mbox/issue1189.mbox.txt": 4,
    "mimekit/mbox/simple.mbox.txt": 3,
    "mimekit/mbox/unmunged.mbox.txt": 2,
    "thunderbird/mailnews/test/data/mbox_mboxrd": 2,
    "thunderbird/mailnews/test/data/mbox_modern": 2,
    "thunderbird/mailnews/test/data/mbox_unquoted": 2,
    "thunderbird/mailnews/local/test/unit/data/movemailspool": 3,
}


def corpora_files(root: Path) -> tuple[list[Path], dict[Path, int]]:
    """(single-message files, {mbox file: message count}) from MANIFEST.tsv."""
    singles: list[Path] = []
    mboxes: dict[Path, int] = {}
    lines = (root / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        rel = line.split("\t")[0]
        if rel in MBOX_COUNTS:
            mboxes[root / rel] = MBOX_COUNTS[rel]
        elif rel.startswith("imaptest/") and rel.endswith(".mbox"):
            mboxes[root / rel] = -1  # counted by the test with the stdlib reader
        else:
            singles.append(root / rel)
    return singles, mboxes
