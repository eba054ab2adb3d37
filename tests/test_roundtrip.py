"""Round trips: vault -> export -> import gives back the same messages, checked by sha256.

Also two real readers of an exported Maildir: ``notmuch new`` (Debian package ``notmuch``) and a
private Dovecot, from which ``mailvault fetch`` must reproduce the vault's hashes.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mailvault.testkit.dovecot import Dovecot, retr_payload
from mailvault.testkit.generator import generate
from mailvault.vault import open_vault
from tests.prereq import binary
from tests.test_export_kit import (
    add_messages,
    catalog_set,
    cli,
    cli_json,
    corpora_dir,
    corpora_files,
    new_vault,
    sha,
    to_lf,
    validate_manifest,
)
from tests.vaults import fetch_json, make_vault

FORMATS = ["maildir", "mbox", "eml"]


def export_import(tmp: Path, vault: Path, fmt: str, *extra: str) -> tuple[Path, Path]:
    """Export ``vault`` and import the result into a fresh vault; returns (target, fresh)."""
    target = tmp / f"out-{fmt}{'.mbox' if fmt == 'mbox' else ''}"
    result = cli(vault, "export", "--format", fmt, "--out", str(target), *extra)
    assert result.exit_code == 0, result.output
    fresh = new_vault(tmp / f"fresh-{fmt}")
    code, report = cli_json(fresh, "import", "--no-index", str(target))
    assert code == 0, report
    assert report["rejected"] == [] and report["skipped"] == []
    return target, fresh


@pytest.mark.parametrize("fmt", FORMATS)
def test_crlf_export_imports_to_the_same_set_of_sha256(
    tmp_path: Path, vault: Path, crafted: list[bytes], fmt: str
) -> None:
    _, fresh = export_import(tmp_path, vault, fmt, "--line-endings", "crlf")
    assert catalog_set(fresh) == catalog_set(vault) == {sha(m) for m in crafted}


@pytest.mark.parametrize("fmt", FORMATS)
def test_lf_export_round_trips_to_the_converted_bytes(
    tmp_path: Path, vault: Path, crafted: list[bytes], fmt: str
) -> None:
    target, fresh = export_import(tmp_path, vault, fmt, "--line-endings", "lf")
    summary_path = (
        target.with_name(target.name + ".manifest.json")
        if fmt == "mbox"
        else target / "manifest.json"
    )
    _, entries = validate_manifest(summary_path)
    assert {e["exported_sha256"] for e in entries} == {sha(to_lf(m)) for m in crafted}
    assert catalog_set(fresh) == {sha(to_lf(m)) for m in crafted}


def test_mbox_without_its_manifest_loses_only_missing_final_line_breaks(
    tmp_path: Path, vault: Path, crafted: list[bytes]
) -> None:
    """Plain mbox cannot say a message had no final line break; everything else survives."""
    box = tmp_path / "bare.mbox"
    result = cli(
        vault,
        "export",
        "--format",
        "mbox",
        "--out",
        str(box),
        "--line-endings",
        "crlf",
        "--no-manifest",
    )
    assert result.exit_code == 0
    fresh = new_vault(tmp_path / "fresh")
    code, report = cli_json(fresh, "import", "--no-index", str(box))
    assert code == 0 and report["messages"] == len(crafted)
    expected = {sha(m if m.endswith(b"\n") else m + b"\n") for m in crafted}
    assert catalog_set(fresh) == expected


def test_corpora_survive_import_export_import(tmp_path: Path) -> None:
    root = corpora_dir()
    singles, mboxes = corpora_files(root)
    emls = tmp_path / "emls"
    emls.mkdir()
    for i, path in enumerate(singles):
        shutil.copyfile(path, emls / f"{i:05d}.eml")
    vault = new_vault(tmp_path / "vault")
    code, report = cli_json(vault, "import", "--no-index", str(emls), *map(str, mboxes))
    assert code == 0, report["rejected"]
    assert report["rejected"] == [] and report["skipped"] == []
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        per_source = dict(
            db.execute("SELECT source, count(*) FROM imports GROUP BY source").fetchall()
        )
    for path, count in mboxes.items():
        if count < 0:  # imaptest: unambiguous mboxes, so the stdlib's count is the truth
            count = len(mailbox.mbox(path, factory=None, create=False))
        assert per_source[str(path)] == count, path
    assert sum(per_source.get(str(emls / f"{i:05d}.eml"), 0) for i in range(len(singles))) == len(
        singles
    )
    expected_singles = {sha(p.read_bytes()) for p in singles}
    original = catalog_set(vault)
    assert expected_singles <= original
    assert report["messages"] == len(singles) + sum(per_source[str(p)] for p in mboxes)
    for fmt in FORMATS:
        _, fresh = export_import(tmp_path, vault, fmt, "--line-endings", "crlf")
        assert catalog_set(fresh) == original, fmt


# -- real readers ----------------------------------------------------------------------------


def notmuch_binary() -> str:
    return binary("notmuch", "notmuch")


def notmuch(tmp: Path, maildir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "notmuch-config"
    config.write_text(
        f"[database]\npath={maildir}\n[new]\ntags=inbox\nignore=manifest.json;manifest.jsonl\n"
        "[user]\nname=Test\nprimary_email=test@example.com\n[index]\ndecrypt=false\n"
    )
    env = {**os.environ, "NOTMUCH_CONFIG": str(config), "HOME": str(tmp)}
    try:
        return subprocess.run(
            [notmuch_binary(), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    finally:  # signed test mail makes gpgme start agents in HOME; leave none running
        gnupg = tmp / ".gnupg"
        if gnupg.exists() and shutil.which("gpgconf"):
            subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False)


def test_notmuch_new_counts_every_exported_message(tmp_path: Path) -> None:
    notmuch_binary()
    messages = [m.raw for m in generate(120, seed=11)]
    vault = new_vault(tmp_path / "vault")
    add_messages(vault, messages)
    out = tmp_path / "md"
    assert cli(vault, "export", "--format", "maildir", "--out", str(out)).exit_code == 0
    new = notmuch(tmp_path, out, "new")
    assert "Found 120 total files" in new.stdout, new.stdout
    assert "Ignoring" not in new.stdout + new.stderr
    files = notmuch(tmp_path, out, "count", "--output=files", "*")
    assert int(files.stdout) == 120
    # Every message is findable by its Message-ID (the generator gives each a unique one).
    ids = notmuch(tmp_path, out, "search", "--output=messages", "*")
    assert len(ids.stdout.split()) == 120


def test_notmuch_accounts_for_every_file_of_the_corpora_export(tmp_path: Path) -> None:
    """Real-world junk: notmuch indexes each exported file or names it as not mail."""
    notmuch_binary()
    root = corpora_dir()
    singles, _ = corpora_files(root)
    vault = new_vault(tmp_path / "vault")
    add_messages(vault, {p.read_bytes() for p in singles})
    out = tmp_path / "md"
    code, summary = cli_json(vault, "export", "--format", "maildir", "--out", str(out))
    assert code == 0
    new = notmuch(tmp_path, out, "new")
    ignored = (new.stdout + new.stderr).count("Ignoring non-mail file")
    assert f"Found {summary['count']} total files" in new.stdout
    files = int(notmuch(tmp_path, out, "count", "--output=files", "*").stdout)
    assert files + ignored == summary["count"]


def test_dovecot_serves_an_exported_maildir_and_fetch_reproduces_the_hashes(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot], crafted: list[bytes]
) -> None:
    """Dovecot serves Maildir files as stored, except that it turns a bare LF into CRLF and
    adds a final CRLF where one is missing (``retr_payload``); for canonical CRLF mail, which
    is what POP3 delivered in the first place, the fetched hashes are the vault's own."""
    server = dovecot_factory({"alice": "alice-secret"})
    canonical = [m.raw for m in generate(60, seed=5)] + [m for m in crafted if retr_payload(m) == m]
    others = [m for m in crafted if retr_payload(m) != m]
    assert len(canonical) > 60 and others
    vault = new_vault(tmp_path / "vault")
    add_messages(vault, canonical + others)
    maildir = server.maildir("alice")
    result = cli(
        vault, "export", "--format", "maildir", "--out", str(maildir), "--line-endings", "crlf"
    )
    assert result.exit_code == 0, result.output
    owner = maildir.stat()
    for path in [maildir, *maildir.rglob("*")]:
        os.chown(path, owner.st_uid, owner.st_gid)
    assert server.mailbox_count("alice") == len(canonical) + len(others)
    fetcher = make_vault(
        tmp_path / "fetcher",
        {
            "box": {
                "host": "localhost",
                "port": server.port,
                "tls": "starttls",
                "ca_file": str(server.ca_file),
            }
        },
    )
    code, report = fetch_json(fetcher)
    assert code == 0, report
    fetched = catalog_set(fetcher)
    assert fetched == {sha(retr_payload(m)) for m in canonical + others}
    assert {sha(m) for m in canonical} <= fetched
    assert catalog_set(vault) & fetched == {sha(m) for m in canonical}
    assert open_vault(fetcher).vault_id != open_vault(vault).vault_id


PEAK = """
import sys
from mailvault.cli import main
sys.argv = ["mailvault", *sys.argv[1:]]
try:
    main()
finally:
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("peak-kib", peak, file=sys.stderr)
"""


def peak_kib(*args: str) -> int:
    """Peak RSS of one CLI run (VmHWM of a fresh process, unaffected by the test's own)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.rsplit("peak-kib", 1)[1].split()[0])


def test_export_and_import_stream_with_flat_memory(tmp_path: Path) -> None:
    """A 48 MiB message costs no more than a few MiB over a 1 MiB one, in every direction."""
    peaks: dict[str, list[int]] = {}
    for size in (1, 48):
        vault = new_vault(tmp_path / f"v{size}")
        body = (b"y" * 76 + b"\r\n>From x\r\n") * (size * 1024 * 1024 // 88)
        add_messages(vault, [b"Subject: big\r\n\r\n" + body])
        for fmt in FORMATS:
            out = tmp_path / f"out{size}-{fmt}"
            peaks.setdefault(fmt, []).append(
                peak_kib("--vault", str(vault), "export", "--format", fmt, "--out", str(out))
            )
        fresh = new_vault(tmp_path / f"f{size}")
        peaks.setdefault("import", []).append(
            peak_kib(
                "--vault", str(fresh), "import", "--no-index", str(tmp_path / f"out{size}-mbox")
            )
        )
    for what, (small, big) in peaks.items():
        assert big - small < 20 * 1024, (what, small, big)
