"""`mailvault index`, `reindex` and `search` through the click group, plus the start-up budget."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner, Result

import mailvault.cli.commands  # noqa: F401  (registers the commands)
from mailvault.cli import cli
from mailvault.resources import json_schema
from mailvault.search import Hit, format_hit
from mailvault.vault import Vault
from tests.test_index_support import PDF_WORD, build_vault, generated, special_messages

REPO = Path(__file__).resolve().parent.parent


def run(vault: Vault | Path, *args: str) -> Result:
    root = vault.root if isinstance(vault, Vault) else vault
    return CliRunner().invoke(cli, ["--vault", str(root), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, dict[str, str]]:
    vault, _, named = build_vault(
        tmp_path_factory.mktemp("cli") / "vault", generated(60, seed=4), special_messages()
    )
    result = run(vault, "index")
    assert result.exit_code == 0, result.output
    assert f"indexed {60 + len(named)} messages" in result.stdout
    return vault, named


def test_index_json_report_and_second_run(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, _ = indexed
    result = run(vault, "index", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["schema"] == "mailvault/index-report/v1"
    assert report["indexed"] == 0 and report["documents"] == 60 + len(special_messages())


def test_exit_codes(indexed: tuple[Vault, dict[str, str]], tmp_path: Path) -> None:
    vault, _ = indexed
    assert run(vault, "search", PDF_WORD).exit_code == 0
    assert run(vault, "search", "nosuchwordanywhere").exit_code == 1
    bad = run(vault, "search", "subject:x", "wrng:y")
    assert bad.exit_code == 2
    assert "unknown field 'wrng'" in bad.stderr and "column 11" in bad.stderr
    assert run(tmp_path / "nothing", "search", "x").exit_code == 2
    assert run(vault, "search", "--json", "--ids", "x").exit_code == 2


def test_text_output_one_line_per_hit(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, named = indexed
    result = run(vault, "search", "--limit", "7", "*")
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and len(lines) == 7
    assert all("\x1b" not in line for line in lines)  # not a terminal: no ANSI
    one = run(vault, "search", PDF_WORD).stdout.splitlines()
    assert len(one) == 1
    assert named["pdf"][:12] in one[0] and "Numbers attached" in one[0]
    assert one[0].startswith("2023-06-15 12:00")


def test_hostile_subject_cannot_drive_the_terminal(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, named = indexed
    out = run(vault, "search", f"id:{named['hostile']}").stdout
    assert "\x1b" not in out and "Evil" in out


def test_json_lines_follow_the_schema(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, named = indexed
    schema = json_schema("search-hit.schema.json")
    result = run(vault, "search", "--json", "--limit", "20", "*")
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 20
    for doc in docs:
        jsonschema.validate(doc, schema)
    (pdf,) = [json.loads(x) for x in run(vault, "search", "--json", PDF_WORD).stdout.splitlines()]
    assert pdf["id"] == named["pdf"]
    assert pdf["message_id"] == "pdf-attached@test.example"
    assert pdf["from"] == "Special Sender <special@example.com>"
    assert pdf["to"] == ["Receiver <receiver@example.org>"]
    assert pdf["date"] == "2023-06-15T12:00:00Z"
    assert pdf["score"] is None
    scored = json.loads(run(vault, "search", "--json", "--sort", "score", PDF_WORD).stdout)
    assert isinstance(scored["score"], float)


HIDDEN = "\x85\u2028\u2029\x9b\x9d\x9c\u202e\u202c\x7f"  # NEL, LS, PS, CSI, OSC, ST, RLO, PDF, DEL


def test_json_output_stays_one_line_for_any_reader(tmp_path: Path) -> None:
    """JSON leaves C1 controls, U+2028/U+2029 and bidi overrides raw inside strings: valid, but
    a reader splitting lines (``str.splitlines``) cut one search hit into several, and a
    terminal acted on them.  Every JSON output writes them as \\u escapes; values unchanged."""
    import base64

    subject = "Splitter \x85nel \u2028ls \u2029ps \x9b31m \x9d52;c;eA==\x9c \u202efdp.exe\u202c\x7f"
    encoded = base64.b64encode(subject.encode()).decode()
    raw = (
        f"From: a@example.com\r\nSubject: =?utf-8?b?{encoded}?=\r\n"
        "Message-ID: <s@example.com>\r\n\r\nbody\r\n"
    ).encode()
    vault, _, named = build_vault(tmp_path / "vault", [], {"split": raw})
    assert run(vault, "index").exit_code == 0
    searched = run(vault, "search", "--json", "splitter").stdout
    shown = run(vault, "show", "--json", named["split"]).stdout
    audited = run(vault, "audit", "--json").stdout
    ledger = tmp_path / "ledger.jsonl"
    assert run(vault, "ledger", "export", "--out", str(ledger)).exit_code == 0
    for out in (searched, shown, audited, ledger.read_text(encoding="utf-8")):
        assert not [c for c in HIDDEN if c in out], out
    (line,) = searched.splitlines()
    assert all(c in json.loads(line)["subject"] for c in HIDDEN)
    assert all(c in json.loads(shown)["subject"] for c in HIDDEN)
    assert all(json.loads(line) for line in audited.splitlines())


def test_count_ids_limit_offset_sort(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, _ = indexed
    total = int(run(vault, "search", "--count", "*").stdout)
    assert total == 60 + len(special_messages())
    ids = run(vault, "search", "--ids", "--limit", "0", "*").stdout.split()
    assert len(ids) == total and all(len(i) == 64 for i in ids)
    assert (
        run(vault, "search", "--ids", "--limit", "5", "--offset", "5", "*").stdout.split()
        == (ids[5:10])
    )
    oldest = run(vault, "search", "--ids", "--limit", "0", "--sort", "date", "*").stdout.split()
    assert oldest == list(reversed(ids)) or set(oldest) == set(ids)
    assert run(vault, "search", "--count", "nosuchwordanywhere").stdout.strip() == "0"
    assert run(vault, "search", "--count", "nosuchwordanywhere").exit_code == 1


def test_words_starting_with_a_dash_are_query_not_options(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    vault, _ = indexed
    everything = int(run(vault, "search", "--count", "*").stdout)
    with_att = int(run(vault, "search", "--count", "has:attachment").stdout)
    result = run(vault, "search", "--count", "*", "-has:attachment")
    assert int(result.stdout) == everything - with_att


def test_reindex_command_gives_the_same_answers(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, _ = indexed
    before = run(vault, "search", "--ids", "--limit", "0", "has:attachment").stdout
    result = run(vault, "reindex")
    assert result.exit_code == 0 and "rebuilt the index" in result.stdout
    assert run(vault, "search", "--ids", "--limit", "0", "has:attachment").stdout == before


def test_index_takes_the_vault_lock(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, _ = indexed
    with vault.write_lock("test"):
        result = run(vault, "index")
    assert result.exit_code == 3 and "locked" in result.stderr


def test_terminal_output_bolds_the_terms() -> None:
    hit = Hit(
        id="a" * 64,
        message_id="m@x",
        date=None,
        from_="Alice <alice@example.com>",
        to=[],
        subject="Hello",
        size=1,
        score=None,
    )
    hit.snippet, hit.highlights = "the word here", [(4, 8)]
    assert "\x1b[1mword\x1b[0m" in format_hit(hit, color=True)
    assert "\x1b" not in format_hit(hit, color=False)
    assert "Alice" in format_hit(hit, color=False)


FORBIDDEN = ("sqlite_utils", "mailvault.parse", "pypdf", "jsonschema", "tenacity", "zstandard")


def _imported_modules(*args: str) -> set[str]:
    """Every module a fresh ``python -X importtime ARGS`` imports (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}


def test_search_path_imports_only_what_it_needs(indexed: tuple[Vault, dict[str, str]]) -> None:
    """The search path (mailvault.search.run) never imports the heavy modules."""
    vault, _ = indexed
    code = (
        "import sys; from pathlib import Path; from mailvault.search import run; "
        f"sys.exit(run(Path({str(vault.root)!r}), {PDF_WORD!r}))"
    )
    imported = _imported_modules("-c", code)
    for name in FORBIDDEN:
        assert not any(m == name or m.startswith(name + ".") for m in imported), name
    assert "tantivy" in imported


def test_whole_search_process_imports_only_what_it_needs(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    """`python -X importtime -m mailvault search ...`: the issue's start-up check."""
    vault, _ = indexed
    imported = _imported_modules("-m", "mailvault", "--vault", str(vault.root), "search", PDF_WORD)
    # urllib.parse and threading: what secret redaction (imported by mailvault.errors) would
    # cost every search start-up if it imported them at module level
    for name in (*FORBIDDEN, "mailvault.catalog", "mailvault.indexer", "urllib.parse", "threading"):
        assert not any(m == name or m.startswith(name + ".") for m in imported), name


def test_search_command_module_adds_no_heavy_imports() -> None:
    """search_cmd itself imports nothing beyond what the CLI group already has."""
    code = (
        "import sys; import mailvault.cli; before = set(sys.modules); "
        "import mailvault.cli.search_cmd; print(sorted(set(sys.modules) - before))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    added = proc.stdout
    for name in (*FORBIDDEN, "tantivy", "mailvault.indexer", "mailvault.show"):
        assert f"'{name}'" not in added, name


def test_fast_entry_matches_the_cli(
    indexed: tuple[Vault, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    from mailvault.search import fast_main

    vault, _ = indexed
    root = str(vault.root)
    for args in (
        ["--limit", "5", "*"],
        ["--json", "--sort", "score", PDF_WORD],
        ["--count", "has:attachment"],
        ["--ids", "--limit=3", "--offset=2", "*", "-has:attachment"],
        ["nosuchwordanywhere"],
    ):
        code = fast_main(["--vault", root, "search", *args])
        fast = capsys.readouterr().out
        slow = run(vault, "search", *args)
        assert (code, fast) == (slow.exit_code, slow.stdout), args
    assert fast_main(["--vault", root, "search", "wrng:x"]) == 2
    assert "unknown field" in capsys.readouterr().err
    for other in (["search", "--help"], ["show", "x"], ["--bogus", "search", "x"], ["search"]):
        assert fast_main(other) is None


def test_a_limit_in_superscript_digits_is_a_usage_error(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    """`search --limit ² cats` was a traceback (exit 1, "no hits" to a script): the fast entry
    took "²" for a number (str.isdigit) and int() refused it."""
    vault, _ = indexed
    base = [sys.executable, "-m", "mailvault", "--vault", str(vault.root), "search"]
    for args in (["--limit", "\u00b2", "x"], ["--offset=\u00b9", "x"]):
        proc = subprocess.run([*base, *args], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "not a valid integer" in proc.stderr


def test_a_lone_dash_h_is_help_and_dash_dash_searches_it(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    """`search -h` once ran the query NOT h (every message) and wrote an audit entry."""
    vault, _ = indexed
    base = [sys.executable, "-m", "mailvault", "--vault", str(vault.root), "search"]
    helped = subprocess.run([*base, "-h"], capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: mailvault search")
    counted = subprocess.run([*base, "--count", "--", "-h"], capture_output=True, text=True)
    assert counted.returncode == 0 and int(counted.stdout) > 0  # NOT h: nearly everything
    assert "search [OPTIONS] QUERY" in run(vault, "search", "-h").output


def test_absurd_limit_or_offset_is_a_one_line_usage_error(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    vault, _ = indexed
    for args in (["--limit", str(2**64 - 1)], ["--offset", str(10**20)], ["--offset", "10" * 6]):
        result = run(vault, "search", *args, "*")
        assert result.exit_code == 2, args
        assert result.stderr.count("\n") == 1 and "out of range" in result.stderr, args
    assert run(vault, "search", "--ids", "--limit", str(10**9), "*").stdout.count("\n") == int(
        run(vault, "search", "--count", "*").stdout
    )


def test_a_cut_page_says_so_on_stderr(indexed: tuple[Vault, dict[str, str]]) -> None:
    """Results stopped at --limit (default 50) with no word that there were more."""
    vault, _ = indexed
    total = int(run(vault, "search", "--count", "*").stdout)
    assert total > 50
    for mode in ([], ["--ids"], ["--json"]):
        result = run(vault, "search", *mode, "*")
        assert len(result.stdout.splitlines()) == 50
        assert result.stderr == (
            f"mailvault: note: showing 50 of {total} hits; use --limit/--offset for more\n"
        ), mode
    paged = run(vault, "search", "--ids", "--limit", "5", "--offset", "10", "*")
    assert f"showing hits 11-15 of {total};" in paged.stderr
    for args in (["--limit", "0"], ["--limit", str(total)], ["--offset", str(total - 5)]):
        assert run(vault, "search", *args, "*").stderr == "", args  # nothing left out
    assert run(vault, "search", "--count", "*").stderr == ""
    past = run(vault, "search", "--offset", str(total + 5), "*")
    assert past.exit_code == 1 and past.stdout == ""
    note = f"mailvault: note: no hits from --offset {total + 5} on: the query has {total}\n"
    assert past.stderr == note


def test_messages_not_indexed_yet_are_announced(tmp_path: Path) -> None:
    """After `import --no-index` a search found nothing and said nothing."""
    import sqlite3

    from mailvault.vault import init_vault

    vault = init_vault(tmp_path / "v")
    emls = tmp_path / "in"
    emls.mkdir()
    for name, raw in special_messages().items():
        (emls / f"{name}.eml").write_bytes(raw)
    assert run(vault, "import", str(emls), "--no-index").exit_code == 0
    warning = "mailvault: warning: {} archived {} not indexed yet: run `mailvault index`\n"
    want = warning.format(len(special_messages()), "messages are")
    for args in (["*"], ["--count", "*"], ["--ids", PDF_WORD], ["--json", PDF_WORD]):
        assert run(vault, "search", *args).stderr == want, args
    assert run(vault, "index").exit_code == 0
    assert run(vault, "search", "*").stderr == ""
    late = tmp_path / "late"
    late.mkdir()
    (late / "late.eml").write_bytes(generated(1, seed=9)[0].raw)
    assert run(vault, "import", str(late), "--no-index").exit_code == 0
    assert run(vault, "search", "--count", "*").stderr == warning.format(1, "message is")
    # while a fetch holds the vault, `mailvault index` would only find it locked
    ready = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from mailvault.vault import open_vault
            with open_vault(Path({str(vault.root)!r})).write_lock("fetch"):
                Path({str(ready)!r}).touch()
                time.sleep(60)
        """)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        while not ready.exists():
            assert holder.poll() is None
            time.sleep(0.02)
        during = run(vault, "search", "--count", "*").stderr
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid} (fetch" in during and "indexes what it stored" in during, during
    db = sqlite3.connect(vault.catalog_path)  # purged: a tombstone row, no index document
    with db:
        latest = "SELECT max(rowid) FROM messages"
        purge = f"UPDATE messages SET purged_at = '2026-01-01' WHERE rowid = ({latest})"
        assert db.execute(purge).rowcount == 1
    db.close()
    assert run(vault, "search", "--count", "*").stderr == ""


SPOOFED = (
    b'From: "ceo@bank.example" <attacker@evil.example>\r\nTo: "a@b.example, x" <victim@corp.example>'
    b"\r\nSubject: wire the money\r\nDate: Mon, 05 Feb 2024 10:00:00 +0000\r\n"
    b"Message-ID: <spoof@evil.example>\r\n\r\nurgent transfer\r\n"
)


def test_a_display_name_that_looks_like_an_address_is_not_shown_as_the_sender(
    tmp_path: Path,
) -> None:
    """From: "ceo@bank.example" <attacker@evil.example> was listed as sent by
    ceo@bank.example: the sender column shows the display name, which here claims an address
    it is not.  The address (the addr-spec) is what an investigator must see."""
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    (spoof,) = import_messages(vault, [SPOOFED])
    assert run(vault, "index").exit_code == 0
    line = run(vault, "search", "urgent").stdout
    sender = line.split("  ")[1].strip()
    assert sender == "attacker@evil.example", line
    assert "ceo@bank.example" not in line
    hit = json.loads(run(vault, "search", "--json", "urgent").stdout)
    assert hit["from"] == '"ceo@bank.example" <attacker@evil.example>'
    assert hit["to"] == ['"a@b.example, x" <victim@corp.example>']
    shown = run(vault, "show", spoof[:12]).stdout
    assert 'From:       "ceo@bank.example" <attacker@evil.example>' in shown
    # address terms match the addr-spec only; the name's words still match as words
    assert run(vault, "search", "--ids", "from:ceo@bank.example").exit_code == 1
    assert run(vault, "search", "--ids", "from:attacker@evil.example").stdout.strip() == spoof
    assert run(vault, "search", "--ids", "from:ceo").stdout.strip() == spoof
    assert run(vault, "search", "--ids", 'from:"ceo bank example"').stdout.strip() == spoof


NAME_ONLY = (
    b'From: "ceo@bank.example" <>\r\nTo: bob@corp.example\r\nSubject: wire the money\r\n'
    b"Date: Mon, 05 Feb 2024 10:00:00 +0000\r\nMessage-ID: <noaddr@evil.example>\r\n\r\n"
    b"urgent transfer\r\n"
)


def test_a_display_name_that_looks_like_an_address_with_no_address_stays_a_name(
    tmp_path: Path,
) -> None:
    """From: "ceo@bank.example" <> (an empty addr-spec) was written bare, ceo@bank.example,
    in the sender column, --json and show: the name passed for the address it is not."""
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    (spoof,) = import_messages(vault, [NAME_ONLY])
    assert run(vault, "index").exit_code == 0
    line = run(vault, "search", "urgent").stdout
    assert line.split("  ")[1].strip() == '"ceo@bank.example" <>', line
    hit = json.loads(run(vault, "search", "--json", "urgent").stdout)
    assert hit["from"] == '"ceo@bank.example" <>'
    assert 'From:       "ceo@bank.example" <>' in run(vault, "show", spoof[:12]).stdout
    assert run(vault, "search", "--ids", "from:ceo@bank.example").exit_code == 1
    assert run(vault, "search", "--ids", "from:ceo").stdout.strip() == spoof


def test_a_mistyped_long_option_is_a_usage_error_not_query_text(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    """`search --limt 5 foo` searched for the words "--limt 5 foo" (exit 1, no hits, and an
    audit entry of that query) instead of saying the option does not exist."""
    vault, _ = indexed
    for args in (["--limt", "5", "foo"], ["foo", "--limt=5"], ["--jsn", "foo"]):
        result = run(vault, "search", *args)
        assert result.exit_code == 2, args
        assert "No such option" in result.stderr and "Did you mean" in result.stderr, args
    assert "--limit" in run(vault, "search", "--limt", "5", "foo").stderr
    assert "--json" in run(vault, "search", "--jsn", "foo").stderr
    # after --, and single-dash words (negation), are query text as before
    assert run(vault, "search", "--count", "--", "--limt", "x").exit_code in (0, 1)
    counted = run(vault, "search", "--count", "*", "-has:attachment", "NOT", "is:unreadable")
    assert counted.exit_code == 0 and int(counted.stdout) > 0
    assert run(vault, "search", "--limit=5", "--sort", "-date", "*").exit_code == 0


def test_the_unindexed_check_reads_a_count_not_the_messages_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once anything was purged, every search counted the live rows of `messages`: a scan of
    the table (155 ms at a million rows).  The catalog now keeps the number of purged rows
    (migration 6, triggers) and of indexed ones (migration 8), so the check is two lookups
    whatever the size; it tells unindexed messages and purged documents apart."""
    import sqlite3

    from mailvault.search.command import index_gap
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    digests = import_messages(vault, [m.raw for m in generated(6, seed=21)])
    assert run(vault, "index").exit_code == 0
    with sqlite3.connect(vault.catalog_path) as db:  # as a retention run stopped before the index
        for digest in digests[:2]:
            db.execute("UPDATE messages SET purged_at = '2026-01-01' WHERE sha256 = ?", (digest,))
            db.execute("DELETE FROM message_meta WHERE sha256 = ?", (digest,))
        db.execute("UPDATE messages SET purged_at = '2026-01-02' WHERE sha256 = ?", (digests[0],))
    db.close()
    import_messages(vault, [m.raw for m in generated(8, seed=22)[6:]])  # two not indexed
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    assert index_gap(vault.root, 6) == (2, 2)  # 8 rows, 2 purged, 4 indexed, 6 documents
    assert index_gap(vault.root, 4) == (2, 0)
    assert index_gap(vault.root, 3) == (3, 0)  # the index lost one (an old backup restored)
    assert not [s for s in statements if "count(" in s.lower()], statements
    monkeypatch.setattr(sqlite3, "connect", connect)
    # catalogs from before the counts (no writer has opened them since): counted as before
    with sqlite3.connect(vault.catalog_path) as db:
        for trigger in ("insert", "update", "delete"):
            db.execute(f"DROP TRIGGER message_meta_indexed_{trigger}")
        db.execute("ALTER TABLE message_counts DROP COLUMN indexed")
    db.close()
    assert index_gap(vault.root, 6) == (2, 2)
    with sqlite3.connect(vault.catalog_path) as db:
        db.execute("DROP TABLE message_counts")
    db.close()
    assert index_gap(vault.root, 6) == (2, 2)


def test_a_catalog_migrated_to_count_indexed_messages_counts_those_already_indexed(
    tmp_path: Path,
) -> None:
    """Migration 8 starts the indexed count from the catalog's rows, and the triggers keep it
    as indexing, re-indexing and purges change them."""
    import sqlite3

    from mailvault.catalog import Catalog
    from mailvault.search.command import index_gap

    vault, digests, _ = build_vault(tmp_path / "v", generated(5, seed=3))
    assert run(vault, "index").exit_code == 0
    with sqlite3.connect(vault.catalog_path) as db:  # as the mailvault before it left it
        for trigger in ("insert", "update", "delete"):
            db.execute(f"DROP TRIGGER message_meta_indexed_{trigger}")
        db.execute("ALTER TABLE message_counts DROP COLUMN indexed")
        db.execute("PRAGMA user_version = 7")
    db.close()
    Catalog(vault.catalog_path).close()

    def indexed() -> int:
        with sqlite3.connect(vault.catalog_path) as db:
            count = db.execute("SELECT indexed FROM message_counts").fetchone()[0]
        db.close()
        return int(count)

    assert indexed() == 5 and index_gap(vault.root, 5) == (0, 0)
    assert run(vault, "reindex").exit_code == 0 and indexed() == 5
    with sqlite3.connect(vault.catalog_path) as db:
        db.execute("DELETE FROM message_meta WHERE sha256 = ?", (digests[0],))
        db.execute("UPDATE message_meta SET indexed_at = NULL WHERE sha256 = ?", (digests[1],))
    db.close()
    assert indexed() == 3
    assert run(vault, "index").exit_code == 0 and indexed() == 5


def test_search_shows_the_real_date_of_a_message_dated_beyond_the_index(tmp_path: Path) -> None:
    """The index holds dates from 1678 to 2262 and a Date outside is indexed at the bound;
    search printed that bound (a message dated 1500 as 1678-01-01, 9999 as 2262-01-01) in
    its text and --json output.  It shows the date the catalog has."""

    def dated(date: str) -> bytes:
        return (
            f"From: a@example.com\r\nSubject: time traveller\r\nDate: {date}\r\n"
            f"Message-ID: <{date.split()[3]}@example.com>\r\n\r\nchronoxyl\r\n"
        ).encode()

    dates = {
        "1500": ("Sat, 30 Jun 1500 09:33:50 +0000", "1500-06-30T09:33:50Z"),
        "9999": ("Fri, 31 Dec 9999 23:59:59 +0000", "9999-12-31T23:59:59Z"),
        "0001": ("Mon, 01 Jan 0001 10:00:00 +0000", "0001-01-01T10:00:00Z"),
    }
    vault, _, named = build_vault(
        tmp_path / "vault", generated(2, seed=3), {k: dated(v[0]) for k, v in dates.items()}
    )
    assert run(vault, "index").exit_code == 0
    result = run(vault, "search", "--json", "chronoxyl")
    assert result.exit_code == 0
    shown = {
        json.loads(line)["id"]: json.loads(line)["date"] for line in result.stdout.splitlines()
    }
    assert shown == {named[k]: want for k, (_, want) in dates.items()}
    text = run(vault, "search", "chronoxyl").stdout
    for _, want in dates.values():
        assert f"{want[:10]} {want[11:16]}" in text


def test_the_progress_line_ends_before_the_summary_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the indexing progress line's ending newline stayed in stderr's buffer
    until exit, so the summary (stdout) was printed on the end of the progress line."""
    import shlex
    import shutil

    assert shutil.which("script"), "script (bsdutils) runs a command on a pseudo-terminal"
    vault, _, _ = build_vault(tmp_path / "vault", generated(5, seed=9))
    command = shlex.join([sys.executable, "-m", "mailvault", "--vault", str(vault.root), "index"])
    typescript = tmp_path / "typescript"
    subprocess.run(
        ["script", "-q", "-e", "-c", command, str(typescript)],
        capture_output=True, cwd=REPO, timeout=120, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    screen = typescript.read_bytes()
    assert b"indexing: 5/5 msgs" in screen
    assert b"\x1b[K\r\nindexed 5 messages" in screen, screen


def test_fetch_progress_of_many_accounts_fits_the_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fetch --jobs` wrote every account's full status on one line with no width limit: on
    an 80-column terminal each update wrapped and left lines of debris."""
    import os as real_os

    from mailvault.cli.fetch_cmd import _Progress

    monkeypatch.setattr(
        "shutil.get_terminal_size", lambda fallback=(80, 24): real_os.terminal_size((80, 24))
    )
    progress = _Progress()
    for n, name in enumerate(["alice", "bob", "carol", "dave", "erin", "frank"]):
        progress(f"{name}@example.com", 100 + n, 100 + n, 5_000_000)
    shown = capsys.readouterr().err.split("\r")[-1].removesuffix("\033[K")
    assert len(shown) <= 79 and shown.startswith("6 accounts: 615/615 msgs 30.0 MB"), shown


def test_search_output_that_cannot_be_written_is_exit_3_not_no_hits(
    indexed: tuple[Vault, dict[str, str]],
) -> None:
    """`search ... > /dev/full`: a traceback and exit 1, which a script reads as "no hits"."""
    vault, _ = indexed
    for mode in (["--count"], ["--ids"], ["--json"], []):
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [sys.executable, "-m", "mailvault", "--vault", str(vault.root), "search", *mode,
                 "*"],
                stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        assert result.returncode == 3, (mode, result.stderr)
        assert result.stderr.endswith("write the output elsewhere\n"), result.stderr
        assert "Traceback" not in result.stderr


def test_purged_mail_left_in_the_index_is_not_shown(tmp_path: Path) -> None:
    """A retention run killed between its catalog commit and its index update left the purged
    messages' documents in the index: search listed them, with snippets of purged text."""
    import sqlite3

    vault, digests, _ = build_vault(tmp_path / "vault", generated(6, seed=21))
    assert run(vault, "index").exit_code == 0
    gone = digests[2]
    from mailvault import ledger

    with sqlite3.connect(vault.catalog_path) as db:  # what the killed run committed
        db.execute("UPDATE messages SET purged_at = '2026-01-01T00:00:00+00:00' WHERE sha256 = ?",
                   (gone,))  # fmt: skip
        db.execute("DELETE FROM message_meta WHERE sha256 = ?", (gone,))
        ledger.append(db, "purge", sha256=gone, size=1, detail={"reason": "retention: test"})
    db.close()
    for mode in (["--ids"], ["--json"], []):
        result = run(vault, "search", *mode, "*")
        assert gone not in result.stdout and gone[:12] not in result.stdout, mode
        assert "still holds 1 purged message" in result.stderr, result.stderr
    assert run(vault, "index").exit_code == 0
    assert "purged" not in run(vault, "search", "--count", "*").stderr


def test_purged_mail_in_the_index_during_a_retention_run_names_the_run(tmp_path: Path) -> None:
    """A search while `retention apply` ran, between its purge and its index update, said a
    retention run "was interrupted" and to run `mailvault index`, which then found the vault
    locked (exit 3): it names the run that holds the vault instead."""
    import sqlite3

    from mailvault import ledger
    from tests.vaults import holding_the_lock

    vault, digests, _ = build_vault(tmp_path / "vault", generated(4, seed=21))
    assert run(vault, "index").exit_code == 0
    with sqlite3.connect(vault.catalog_path) as db:  # what the run has committed so far
        db.execute("UPDATE messages SET purged_at = '2026-01-01T00:00:00+00:00' WHERE sha256 = ?",
                   (digests[0],))  # fmt: skip
        db.execute("DELETE FROM message_meta WHERE sha256 = ?", (digests[0],))
        ledger.append(db, "purge", sha256=digests[0], size=1, detail={"reason": "retention: t"})
    db.close()
    with holding_the_lock(vault.root, "retention apply") as pid:
        during = run(vault, "search", "*")
    assert digests[0][:12] not in during.stdout
    warning = during.stderr
    assert f"still holds 1 purged message(s) while pid {pid} (retention apply" in warning, warning
    assert "interrupted" not in warning and "; run `mailvault index`" not in warning, warning
    after = run(vault, "search", "*").stderr  # the run is gone: it was interrupted
    assert "(a retention run was interrupted)" in after and "; run `mailvault index`" in after


def test_a_nul_parts_words_as_a_space_does(tmp_path: Path) -> None:
    """The index dropped NULs, merging the words around them: a Subject "nul<NUL>in<NUL>subject"
    was found only as `nulinsubject`, and search --json gave another Subject than show --json."""
    from tests.test_index_support import import_messages

    subject = base64.b64encode(b"hostile nul\x00in\x00subject").decode()
    raw = (
        f"From: a@b.example\r\nSubject: =?utf-8?b?{subject}?=\r\nMessage-ID: <nul@x>\r\n"
        "Date: Mon, 05 Feb 2024 10:00:00 +0000\r\n\r\nbody\x00text here\r\n"
    ).encode()
    vault, _, _ = build_vault(tmp_path / "v", [])
    (digest,) = import_messages(vault, [raw])
    assert run(vault, "index").exit_code == 0
    for query in ("subject:nul", "subject:in", "subject:subject", 'subject:"nul in subject"'):
        assert run(vault, "search", "--ids", query).stdout.strip() == digest, query
    assert run(vault, "search", "--ids", "body:text").stdout.strip() == digest
    assert run(vault, "search", "--ids", "subject:nulinsubject").exit_code == 1
    hit = json.loads(run(vault, "search", "--json", "hostile").stdout)
    shown = json.loads(run(vault, "show", "--json", digest).stdout)
    assert hit["subject"] == shown["subject"] == "hostile nul\x00in\x00subject"
    line = run(vault, "search", "hostile").stdout
    assert "\x00" not in line and "hostile nul in subject" in line


def _search(vault: Vault, *args: str, limit: int = 0, sort: str = "-date") -> tuple[int, str]:
    """`search` through ``mailvault.search.run``, click-free: (exit code, stdout)."""
    import io

    from mailvault.search import run as run_search

    mode = args[0] if args else "text"
    out, err = io.StringIO(), io.StringIO()
    code = run_search(vault.root, "*", limit=limit, sort=sort, mode=mode, out=out, err=err)
    return code, out.getvalue()


def test_hits_are_written_as_they_are_read(
    indexed: tuple[Vault, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`search --limit 0` read every hit's stored fields and made every snippet before it
    printed the first line: memory grew with the number of hits.  A line is written once its
    batch of hits is read."""
    import io

    from mailvault.search import engine
    from mailvault.search import run as run_search

    vault, _ = indexed
    monkeypatch.setattr(engine, "HIT_BATCH", 4)
    read = 0
    real_hit = engine._hit

    def counted(*args: object, **kwargs: object) -> Hit:
        nonlocal read
        read += 1
        return real_hit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_hit", counted)

    class Watching(io.StringIO):
        """Standard output that notes how many hits had been read at each line."""

        seen: list[int] = []

        def write(self, text: str) -> int:
            self.seen.append(read)
            return super().write(text)

    for mode in ("text", "json", "ids"):
        read, out = 0, Watching()
        out.seen = []
        assert run_search(vault.root, "*", limit=0, mode=mode, out=out, err=io.StringIO()) == 0
        assert len(out.seen) > 40 and read == len(out.seen), mode
        assert out.seen[:5] == [4, 4, 4, 4, 8], mode  # the first batch, then the next


def test_output_is_the_same_whatever_the_batch(
    indexed: tuple[Vault, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written batch by batch, the hits are those of one read, in the same order, byte for
    byte, and each --json line still follows the schema."""
    from mailvault.search import engine

    vault, _ = indexed
    schema = json_schema("search-hit.schema.json")
    for mode in ("text", "json", "ids"):
        for sort in ("-date", "date", "score"):
            monkeypatch.setattr(engine, "HIT_BATCH", 10**6)
            whole = _search(vault, mode, sort=sort)
            monkeypatch.setattr(engine, "HIT_BATCH", 3)
            assert _search(vault, mode, sort=sort) == whole, (mode, sort)
            assert whole[0] == 0 and whole[1].count("\n") > 60
            if mode == "json":
                for line in whole[1].splitlines():
                    jsonschema.validate(json.loads(line), schema)


def test_purged_hits_are_left_out_across_batches_and_audited_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hits read in batches: purged ones (left in the index by a killed retention run) are
    dropped wherever they fall, and the audit entry, written before the first line, counts
    the hits shown."""
    import sqlite3

    from mailvault import ledger
    from mailvault.compliance import audit_entries
    from mailvault.search import engine

    vault, digests, _ = build_vault(tmp_path / "vault", generated(11, seed=21))
    assert run(vault, "index").exit_code == 0
    gone = set(digests[1:9:3])
    with sqlite3.connect(vault.catalog_path) as db:
        for sha in gone:
            db.execute("UPDATE messages SET purged_at = '2026-01-01T00:00:00+00:00' "
                       "WHERE sha256 = ?", (sha,))  # fmt: skip
            db.execute("DELETE FROM message_meta WHERE sha256 = ?", (sha,))
            ledger.append(db, "purge", sha256=sha, size=1, detail={"reason": "retention: test"})
    db.close()
    monkeypatch.setattr(engine, "HIT_BATCH", 2)
    for mode in ("ids", "json", "text"):
        code, out = _search(vault, mode)
        assert code == 0 and out.count("\n") == 11 - len(gone), mode
        assert not any(sha[:12] in out for sha in gone), mode
        assert audit_entries(vault)[-1]["results"] == 11 - len(gone)
    code, out = _search(vault, "ids")
    assert out.split() == [d for d in _all_ids_by_date(vault) if d not in gone]


def _all_ids_by_date(vault: Vault) -> list[str]:
    from mailvault.search import Searcher

    return [h.id for h in Searcher(vault.index_path, "*").page(limit=0, snippets=False)]


def _with_closed(fds: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``mailvault ARGS`` run with the shell's redirections ``fds`` (``>&-``: stdout closed,
    as some cron and daemon wrappers leave it)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {fds}', "sh", sys.executable, "-m", "mailvault", *args],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [["search", "--count", "*"], ["search", "--ids", "*"], ["search", "--json", "--limit=2", "*"],
     ["search", "--sort=date", "*"], ["ledger", "head"], ["audit", "--head"]],
)  # fmt: skip
def test_a_closed_stdout_is_a_one_line_error_not_a_traceback(
    indexed: tuple[Vault, dict[str, str]], args: list[str]
) -> None:
    """`mailvault ... >&-`: an AttributeError traceback and exit 1 (a search read as "no
    hits"); now the documented exit 3 and one line naming standard output."""
    vault, _ = indexed
    result = _with_closed(">&-", "--vault", str(vault.root), *args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("mailvault: error: standard output is closed"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_closed_stdin_or_stderr_changes_nothing(indexed: tuple[Vault, dict[str, str]]) -> None:
    vault, _ = indexed
    for fds in ("<&-", "2>&-", "<&- 2>&-"):
        for args in (["search", "--count", "*"], ["ledger", "head"]):
            done = _with_closed(fds, "--vault", str(vault.root), *args)
            assert (done.returncode, done.stdout.count("\n")) == (0, 1), (fds, args, done)


def test_no_file_opened_later_takes_a_closed_standard_descriptor() -> None:
    """With fd 1 closed, the next file opened (the vault's lock) became fd 1: what was
    printed would have gone into it.  /dev/null now holds 0, 1 and 2 from the start."""
    probe = (
        "import os, sys; from mailvault._stdio import reopen_closed; reopen_closed(); "
        "fd = os.open(sys.argv[1], os.O_RDONLY); os.write(2, b'%d %s' % (fd, "
        "os.readlink('/proc/self/fd/1').encode()))"
    )
    done = subprocess.run(
        ["sh", "-c", 'exec "$@" <&- >&-', "sh", sys.executable, "-c", probe, str(REPO)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.stderr == "3 /dev/null", done.stderr


def test_sigterm_stops_the_fast_search_path_with_its_line(tmp_path: Path) -> None:
    """SIGTERM stops every command as Ctrl-C does, with `mailvault: terminated` and exit 143;
    the click-free search path died silently instead (QA).  (In a child: a command a signal
    stopped leaves without the interpreter's shutdown, which would end the test run too.)"""
    script = f"""
import os, signal, sys, time
from mailvault.search import command
def terminated_while_running(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises first
    return 0
command.run = terminated_while_running
sys.exit(command.fast_main(["--vault", {str(tmp_path)!r}, "search", "x"]) + 100)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (143, "mailvault: terminated\n"), result
