"""The fast export path (whole messages, worker processes) gives exactly what the streaming one does.

Every export of a handful of messages runs in-process and mostly streamed; these tests force the
worker pool (``INLINE_MAX``) and small tasks on the crafted messages, mix in streamed messages
(``WHOLE_MAX``), and compare byte for byte and line for line with the plain in-process export.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvault.export import _target, pipeline
from mailvault.export.manifest import mbox_line_parts, render_entry
from mailvault.export.transform import (
    META_FIELDS,
    MboxrdQuoter,
    MessageMeta,
    header_block,
    header_fields,
    message_meta,
    peek_header,
    quote_mboxrd,
)
from mailvault.store import BlobStore
from tests.test_export_kit import (
    add_messages,
    cli,
    cli_json,
    manifest_lines,
    new_vault,
    read_stdlib_mbox,
    sha,
    unquote_mboxrd,
)

PIECES = [b"\r", b"\n", b">", b"From ", b"Fro", b"m ", b"x", b"From", b" ", b">>", b"\r\n"]


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes even for a few messages, three messages per task."""
    monkeypatch.setattr(pipeline, "INLINE_MAX", 1)
    monkeypatch.setattr(pipeline, "TASK_MESSAGES", 3)
    monkeypatch.setattr(pipeline, "worker_count", lambda: 2)


# -- the whole-message transforms ----------------------------------------------------------------


@settings(max_examples=400)
@given(st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join))
def test_whole_message_quoting_equals_the_streaming_quoter(data: bytes) -> None:
    streamed = MboxrdQuoter()
    assert quote_mboxrd(data) == streamed.feed(data) + streamed.flush()


def test_header_block_equals_the_streaming_peek(crafted: list[bytes]) -> None:
    for raw in crafted:
        chunks = iter([raw[i : i + 1024 * 1024] for i in range(0, len(raw), 1024 * 1024)])
        assert header_block(raw) == peek_header(chunks)[0]


FIELD_PIECES = [b"\r", b"\n", b" ", b"\t", b":", b"Date", b"FROM", b"message-id", b"x", b"\xe9"]
FIELD_PIECES += [b"Return-PATH", b"dAtE"]


def fields_reference(header: bytes) -> dict[str, str]:
    """The first value of each metadata field, by the obvious line-start regex."""
    found: dict[str, str] = {}
    pattern = rb"(?im)^(date|from|message-id|return-path)[ \t]*:(.*?)(?=\r?\n(?![ \t])|\Z)"
    for match in re.finditer(pattern, header, re.DOTALL):
        name = match.group(1).decode("ascii").lower()
        value = re.sub(rb"[ \t]*\r?\n[ \t]+", b" ", match.group(2)).strip()
        found.setdefault(name, value.decode("utf-8", "replace"))
    return found


@settings(max_examples=400)
@given(st.lists(st.sampled_from(FIELD_PIECES), max_size=40).map(b"".join))
def test_header_fields_equal_the_line_start_reference(header: bytes) -> None:
    assert header_fields(header, META_FIELDS) == fields_reference(header)


def manifest_entry(
    sha256: str,
    meta: MessageMeta,
    size: int,
    *,
    path: str | None = None,
    offset: int | None = None,
    exported_sha256: str | None = None,
) -> dict[str, Any]:
    """The entry as docs/export.md and the schema document it, keys in order (the reference
    ``render_entry`` must match)."""
    entry: dict[str, Any] = {
        "sha256": sha256,
        "message_id": meta.message_id,
        "date": meta.date.isoformat(),
        "date_source": "header" if meta.date_from_header else "ingest",
        "size": size,
    }
    if path is not None:
        entry["path"] = path
    if offset is not None:
        entry["offset"] = offset
        entry["length"] = size
    if exported_sha256 is not None:
        entry["exported_sha256"] = exported_sha256
    return entry


def entry_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def test_mbox_line_parts_compose_to_the_entry_line(crafted: list[bytes]) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    for raw in crafted:
        meta = message_meta(header_block(raw), when)
        for exported in (None, sha(raw)):
            head, tail = mbox_line_parts(sha(raw), meta, len(raw), exported)
            entry = manifest_entry(sha(raw), meta, len(raw), offset=12345, exported_sha256=exported)
            assert f"{head}12345{tail}" == entry_line(entry)
            assert json.loads(f"{head}12345{tail}") == entry


@given(
    st.one_of(st.none(), st.text()),
    st.booleans(),
    st.one_of(st.none(), st.text()),
    st.one_of(st.none(), st.integers(0, 2**40)),
    st.one_of(st.none(), st.just("ab" * 32)),
)
def test_render_entry_is_the_entry_line(
    message_id: str | None,
    from_header: bool,
    path: str | None,
    offset: int | None,
    exported: str | None,
) -> None:
    meta = MessageMeta(message_id, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), from_header, "x")
    entry = manifest_entry("cd" * 32, meta, 77, path=path, offset=offset, exported_sha256=exported)
    assert render_entry(
        "cd" * 32, meta, 77, path=path, offset=offset, exported_sha256=exported
    ) == entry_line(entry)


# -- the pool against the in-process export -------------------------------------------------------


def _entries_without_paths(path: Path) -> list[dict[str, object]]:
    entries = manifest_lines(path)
    for entry in entries:
        entry.pop("path", None)
    return entries


@pytest.mark.parametrize("fmt", ["maildir", "mbox", "eml"])
@pytest.mark.parametrize("line_endings", ["lf", "crlf"])
def test_pool_export_equals_the_in_process_export(
    tmp_path: Path,
    vault: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    line_endings: str,
) -> None:
    plain = tmp_path / "plain"
    assert (
        cli(
            vault, "export", "--format", fmt, "--out", str(plain), "--line-endings", line_endings
        ).exit_code
        == 0
    )
    monkeypatch.setattr(pipeline, "INLINE_MAX", 1)
    monkeypatch.setattr(pipeline, "TASK_MESSAGES", 3)
    monkeypatch.setattr(pipeline, "worker_count", lambda: 2)
    monkeypatch.setattr(pipeline, "WHOLE_MAX", 2000)  # the bigger ones are streamed in between
    pooled = tmp_path / "pooled"
    code, summary = cli_json(
        vault, "export", "--format", fmt, "--out", str(pooled), "--line-endings", line_endings
    )
    assert code == 0 and summary["added"] == summary["count"] == 14
    if fmt == "mbox":
        assert pooled.read_bytes() == plain.read_bytes()
        assert (
            Path(f"{pooled}.manifest.jsonl").read_bytes()
            == Path(f"{plain}.manifest.jsonl").read_bytes()
        )
        return
    assert _entries_without_paths(pooled / "manifest.jsonl") == _entries_without_paths(
        plain / "manifest.jsonl"
    )
    for entry in manifest_lines(pooled / "manifest.jsonl"):
        data = (pooled / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.get("exported_sha256", entry["sha256"])
        assert len(data) == entry["size"]
    if fmt == "maildir":
        assert os.listdir(pooled / "tmp") == []
        writers = {name.split("P", 1)[1].split("Q", 1)[0] for name in os.listdir(pooled / "cur")}
        assert writers - {str(os.getpid())}  # worker processes wrote files
    assert not [p for p in pooled.rglob("*") if ".tmp-" in p.name]


def test_pool_reexport_adds_only_what_is_missing(
    tmp_path: Path, crafted: list[bytes], pooled: None
) -> None:
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:6])
    out = tmp_path / "md"
    code, first = cli_json(root, "export", "--format", "maildir", "--out", str(out))
    assert (code, first["added"], first["skipped"]) == (0, 6, 0)
    add_messages(root, crafted[6:10])
    code, second = cli_json(root, "export", "--format", "maildir", "--out", str(out))
    assert (code, second["count"], second["added"], second["skipped"]) == (0, 10, 4, 6)
    assert len(os.listdir(out / "cur")) == 10


def test_pool_stops_at_a_damaged_blob(tmp_path: Path, crafted: list[bytes], pooled: None) -> None:
    root = new_vault(tmp_path / "vault")
    digests = add_messages(root, crafted[:8])
    blob = BlobStore(root).find(digests[5])
    assert blob is not None
    blob.unlink()
    writer = BlobStore(root, compress=False).writer()
    writer.write(b"not the original content")
    os.rename(writer.finish().tmp_path, blob.with_name(digests[5]))
    for fmt in ("mbox", "maildir"):
        out = tmp_path / f"out-{fmt}"
        result = cli(root, "export", "--format", fmt, "--out", str(out))
        assert result.exit_code == 3 and "mailvault verify" in result.stderr
        assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert not (tmp_path / "out-mbox").exists()
    assert os.listdir(tmp_path / "out-maildir" / "tmp") == []
    assert not (tmp_path / "out-maildir" / "manifest.json").exists()


def test_pool_append_equals_the_in_process_append(
    tmp_path: Path, crafted: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:5])
    plain, pooled = tmp_path / "plain.mbox", tmp_path / "pooled.mbox"
    for out in (plain, pooled):
        assert cli(root, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    add_messages(root, crafted[5:])
    assert cli(root, "export", "--format", "mbox", "--out", str(plain), "--append").exit_code == 0
    monkeypatch.setattr(pipeline, "INLINE_MAX", 1)
    monkeypatch.setattr(pipeline, "TASK_MESSAGES", 3)
    monkeypatch.setattr(pipeline, "worker_count", lambda: 2)
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(pooled), "--append")
    assert code == 0 and summary["count"] == len(crafted)
    assert pooled.read_bytes() == plain.read_bytes()
    assert manifest_lines(Path(f"{pooled}.manifest.jsonl")) == manifest_lines(
        Path(f"{plain}.manifest.jsonl")
    )


@pytest.mark.parametrize("mode", ["inline", "pool"])
@pytest.mark.parametrize("ending", [b"\n", b"", b"\n\n"])
def test_append_keeps_every_byte_already_in_the_mbox(
    tmp_path: Path, crafted: list[bytes], monkeypatch: pytest.MonkeyPatch, mode: str, ending: bytes
) -> None:
    """An mbox written by another program may end in one line break or none (Python's mailbox
    writes a single one): the From_ line still starts a line after a blank one, nothing that
    was there changes, and every manifest offset points at its message."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:6])
    out = tmp_path / "box"
    original = b"From x@y Mon Jan  1 00:00:00 2024\nSubject: a\n\nbody" + ending
    out.write_bytes(original)
    if mode == "pool":
        monkeypatch.setattr(pipeline, "INLINE_MAX", 1)
        monkeypatch.setattr(pipeline, "TASK_MESSAGES", 2)
        monkeypatch.setattr(pipeline, "worker_count", lambda: 2)
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    assert code == 0 and summary["count"] == 6
    data = out.read_bytes()
    padded = original + b"\n" * (2 - len(ending))
    assert data.startswith(padded) and data[len(padded) :].startswith(b"From ")
    assert summary["append"]["offset"] == len(padded) and b"\x00" not in data[: len(padded) + 1]
    assert len(read_stdlib_mbox(out)) == 7
    for entry in manifest_lines(Path(f"{out}.manifest.jsonl")):
        cut = data[entry["offset"] : entry["offset"] + entry["length"]]
        assert hashlib.sha256(unquote_mboxrd(cut)).hexdigest() == entry["exported_sha256"]


def test_a_run_copy_failing_midway_reports_the_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills after part of a run was copied: the OSError reaches the caller (which
    turns it into "disk full")."""
    run = tmp_path / "run"
    run.write_bytes(os.urandom(300_000))
    real_sendfile = os.sendfile
    calls: list[int] = []

    def fill_up(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_sendfile(out_fd, in_fd, offset, min(count, 1000))

    source = os.open(run, os.O_RDONLY)
    target = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        monkeypatch.setattr(os, "sendfile", fill_up)
        with pytest.raises(OSError) as info:
            _target.copy_range(source, target, 10, 200_000)
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC and calls == [10, 1010]
        assert (tmp_path / "out").read_bytes() == run.read_bytes()[10:1010]
        with pytest.raises(OSError) as info:  # a run cut short is an error before any write
            _target.copy_range(source, target, 200_000, 100_001)
        assert info.value.errno == errno.EIO
        assert (tmp_path / "out").stat().st_size == 1000
    finally:
        os.close(source)
        os.close(target)


def test_a_source_shrunk_during_the_copy_is_named_as_such(tmp_path: Path) -> None:
    """Another program truncates the file being copied (a mail client compacting the mbox a
    killed append's bytes are set aside from) while the copy runs: "shorter than its
    records", which the caller reports; the copy from a mapping failed with EFAULT ("Bad
    address")."""
    import threading

    (tmp_path / "source").write_bytes(os.urandom(4_000_000))
    source = os.open(tmp_path / "source", os.O_RDWR)
    reader, writer = os.pipe()
    received: list[bytes] = []

    def drain() -> None:
        received.append(os.read(reader, 65536))
        os.ftruncate(source, 100_000)  # after the copy has begun
        while chunk := os.read(reader, 1 << 20):
            received.append(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        with pytest.raises(OSError) as info:
            _target.copy_range(source, writer, 0, 4_000_000)
    finally:
        os.close(writer)
        thread.join()
        os.close(reader)
        os.close(source)
    assert info.value.errno == errno.EIO and "shorter" in str(info.value)
    assert len(b"".join(received)) <= 4_000_000


def test_a_run_copy_into_an_append_only_target_falls_back_to_read_and_write(
    tmp_path: Path,
) -> None:
    """``sendfile`` refuses an ``O_APPEND`` target (EINVAL); the copy still happens."""
    data = os.urandom(3_000_000)
    (tmp_path / "run").write_bytes(data)
    (tmp_path / "out").write_bytes(b"head")
    source = os.open(tmp_path / "run", os.O_RDONLY)
    target = os.open(tmp_path / "out", os.O_WRONLY | os.O_APPEND)
    try:
        _target.copy_range(source, target, 5, 2_500_000)
    finally:
        os.close(source)
        os.close(target)
    assert (tmp_path / "out").read_bytes() == b"head" + data[5:2_500_005]


def test_append_in_a_directory_it_cannot_write_stages_runs_in_the_temp_dir(
    tmp_path: Path, crafted: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail spool: the mbox is writable, its directory is not.  (Root passes every access
    check, so the refusal is simulated.)"""
    import tempfile

    from mailvault.export import mbox

    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted)
    spool = tmp_path / "spool"
    spool.mkdir()
    plain, box = tmp_path / "plain.mbox", spool / "box"
    for out in (plain, box):
        out.write_bytes(b"From a@b Mon Jan  1 00:00:00 2001\nSubject: old\n\nold body\n")
    assert cli(root, "export", "--format", "mbox", "--out", str(plain), "--append").exit_code == 0
    real_access = os.access
    monkeypatch.setattr(
        mbox.os, "access", lambda p, mode: str(p) != str(spool) and real_access(p, mode)
    )
    monkeypatch.setattr(pipeline, "INLINE_MAX", 1)
    monkeypatch.setattr(pipeline, "TASK_MESSAGES", 3)
    monkeypatch.setattr(pipeline, "worker_count", lambda: 2)
    runs_before = set(Path(tempfile.gettempdir()).glob(".box.tmp-run-*"))
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(box), "--append")
    assert code == 0 and summary["count"] == len(crafted)
    assert box.read_bytes() == plain.read_bytes()
    assert set(Path(tempfile.gettempdir()).glob(".box.tmp-run-*")) == runs_before
    assert sorted(p.name for p in spool.iterdir()) == [
        "box",
        "box.manifest.json",
        "box.manifest.jsonl",
    ]
    target = mbox.MboxTarget(box, append=True)
    target.open()
    try:
        run = target.stage_run([b"From x Mon Jan  1 00:00:00 2001\n", b"\n"])
        assert Path(run).parent == Path(tempfile.gettempdir())
        os.unlink(run)
    finally:
        target.abort()


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_batches_finished_in_the_background_keep_every_file(
    tmp_path: Path, vault: Path, crafted: list[bytes], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setattr(_target, "BATCH_MESSAGES", 2)
    out = tmp_path / "out"
    code, summary = cli_json(vault, "export", "--format", fmt, "--out", str(out))
    assert code == 0 and summary["added"] == len(crafted)
    entries = manifest_lines(out / "manifest.jsonl")
    assert len({e["path"] for e in entries}) == len(crafted)
    for entry in entries:
        assert sha((out / entry["path"]).read_bytes()) == entry.get(
            "exported_sha256", entry["sha256"]
        )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_background_batch_stops_the_export_cleanly(
    tmp_path: Path,
    vault: Path,
    crafted: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    """The second batch's syncfs fails (disk full): one-line error, only whole files in cur/."""
    monkeypatch.setattr(_target, "BATCH_MESSAGES", 3)
    monkeypatch.setattr(pipeline, "INLINE_MAX", 1)
    monkeypatch.setattr(pipeline, "TASK_MESSAGES", 2)
    monkeypatch.setattr(pipeline, "worker_count", lambda: workers)
    calls: list[int] = []
    real_sync = _target.sync_filesystem

    def failing_sync(path: Path) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(path)

    monkeypatch.setattr(_target, "sync_filesystem", failing_sync)
    out = tmp_path / "md"
    result = cli(
        vault, "export", "--format", "maildir", "--out", str(out), "--line-endings", "crlf"
    )
    assert result.exit_code == 3 and result.stderr.startswith("mailvault: error: disk full")
    assert result.stderr.count("\n") == 1
    assert os.listdir(out / "tmp") == [] and not (out / "manifest.json").exists()
    by_digest = {sha(m): m for m in crafted}
    names = os.listdir(out / "cur")
    assert len(names) == 3  # the first batch, complete
    for name in names:
        assert (out / "cur" / name).read_bytes() == by_digest[name.split(",H=")[1][:64]]


def _export_in_background(
    tmp_path: Path, fmt: str, seed: int, stderr: int, *more: str
) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """A vault of 3,000 small messages, and its export to ``tmp_path/out`` (``more`` options)
    running in a process group of its own (so a signal reaches the workers too)."""
    from mailvault.testkit.generator import generate

    root = new_vault(tmp_path / "vault")
    add_messages(root, [m.raw for m in generate(3000, seed, median_size=4000, max_size=20000)])
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "mailvault", "--vault", str(root), "export", "--format"]
    argv += [fmt, "--out", str(out), *more]
    return root, out, subprocess.Popen(argv, start_new_session=True, stderr=stderr)


def _any_written(paths: Iterable[Path]) -> bool:
    """Whether one of these files has data; the export removes its runs as it goes, so a file
    may vanish between listing and stat."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_size:
                return True
    return False


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
@pytest.mark.parametrize(
    ("signum", "code", "word"), [(2, 130, b"interrupted"), (15, 143, b"terminated")]
)
def test_ctrl_c_stops_workers_and_leaves_no_temporary_file(
    tmp_path: Path, fmt: str, signum: int, code: int, word: bytes
) -> None:
    """Ctrl-C (SIGINT to the whole process group) mid-export: exit 130, no temporary file (tmp/
    of the Maildir; the mbox's temporary file and its workers' staged runs), no worker left; the
    next export completes the target.  SIGTERM to the group (a service manager's stop) the
    same, exit 143: it killed the workers and left the main process to die unannounced."""
    root, out, proc = _export_in_background(tmp_path, fmt, 11, subprocess.PIPE)
    cur = out / "cur"

    def started() -> bool:
        if fmt == "maildir":
            return cur.is_dir() and any(cur.iterdir())
        return _any_written(tmp_path.glob(".out.tmp-*"))

    while proc.poll() is None and not started():
        pass
    os.killpg(proc.pid, signum)  # what the terminal does on Ctrl-C (2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err == b"mailvault: " + word + b"\n"
    assert [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name] == []
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert left.stdout == ""
    if fmt == "maildir":
        assert list((out / "tmp").iterdir()) == []
        placed = len(list(cur.iterdir()))
        assert 0 < placed < 3000
    else:
        assert not out.exists()
    result = cli(root, "export", "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    if fmt == "maildir":
        assert len(list(cur.iterdir())) == 3000
    else:
        assert len(manifest_lines(Path(f"{out}.manifest.jsonl"))) == 3000


def test_sigterm_mid_append_takes_the_appended_bytes_back_out(tmp_path: Path) -> None:
    """`export --append` stopped by SIGTERM (`timeout`, a systemd stop): the process died with
    tens of MB appended to the user's mbox, no manifest, its journal and lock left hidden
    beside it, and no word.  Now it is rolled back as Ctrl-C rolls it back: the mbox as it
    was, nothing left beside it, exit 143 and one line."""
    before = b"From a@b Thu Jan  1 00:00:00 1970\nSubject: kept\n\nold mail\n\n"
    (tmp_path / "out").write_bytes(before)
    root, out, proc = _export_in_background(tmp_path, "mbox", 13, subprocess.PIPE, "--append")
    while proc.poll() is None and out.stat().st_size == len(before):
        pass
    os.killpg(proc.pid, 15)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (143, b"mailvault: terminated\n")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "vault"]
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout == b""


@pytest.mark.parametrize("fmt", ["mbox", "eml", "maildir"])
def test_the_next_export_clears_what_a_killed_one_left(tmp_path: Path, fmt: str) -> None:
    """kill -9 of the whole export (no handler runs): its temporary files stay behind, and the
    next export into the same target removes them, and only them: another export's, still
    running, are left alone."""
    root, out, proc = _export_in_background(tmp_path, fmt, 12, subprocess.DEVNULL)

    def ours() -> list[Path]:
        return [p for p in tmp_path.rglob(".*.tmp-*") if p.is_file()]

    while proc.poll() is None and not _any_written(ours()):
        pass
    os.killpg(proc.pid, 9)
    proc.wait()
    left = ours()
    assert left, "the kill came too late to leave anything"
    live = subprocess.Popen(["sleep", "60"])  # stands for an export still running
    try:
        where = tmp_path if fmt == "mbox" else out
        name = "out" if fmt == "mbox" else ("manifest.jsonl" if fmt == "maildir" else "x.eml")
        alive = where / f".{name}.tmp-{live.pid}-0123456789ab"
        alive.write_bytes(b"partial")
        result = cli(root, "export", "--format", fmt, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert ours() == [alive]
        if fmt == "maildir":  # the killed workers' files in tmp/ are gone too
            assert list((out / "tmp").iterdir()) == []
    finally:
        live.kill()
        live.wait()


_KILLED_APPEND = """
import os, sys
from mailvault.export import mbox, pipeline
pipeline.INLINE_MAX, pipeline.TASK_MESSAGES, pipeline.worker_count = 1, 2, lambda: 2
copy = mbox.MboxTarget._copy_segment
done = []
def copy_then_die(self):
    copy(self)
    done.append(1)
    if len(done) == 2:  # SIGKILL: no handler, no clean-up, the journal stays
        os._exit(9)
mbox.MboxTarget._copy_segment = copy_then_die
from mailvault.cli import main
sys.argv = ["mailvault", "--vault", sys.argv[1], "export", "--format", "mbox", "--out",
            sys.argv[2], "--append"]
main()
"""


def test_an_append_killed_half_way_is_set_aside_by_the_next(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """kill -9 during `export --append`: its partial output stays in the mbox, so the rerun
    must not append after it (every message twice, one cut short).  The rerun finds the killed
    run's journal, moves those bytes aside into a file of their own (another program might
    have appended behind them), and appends in their place: each message once."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:8])
    out = tmp_path / "box.mbox"
    original = b"From x@y Mon Jan  1 00:00:00 2024\nSubject: kept\n\nbody\n\n"
    out.write_bytes(original)
    argv = [sys.executable, "-c", _KILLED_APPEND, str(root), str(out)]
    assert subprocess.run(argv, capture_output=True).returncode == 9
    partial = out.read_bytes()
    assert len(partial) > len(original) and partial.startswith(original)
    assert [p.name for p in tmp_path.glob(".box.mbox.append-journal-*")]
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    assert code == 0 and summary["count"] == 8
    (aside,) = tmp_path.glob("box.mbox.interrupted-*")
    assert aside.read_bytes() == partial[len(original) :]
    assert "was killed" in summary["warnings"][0] and str(aside) in summary["warnings"][0]
    messages = read_stdlib_mbox(out)
    assert len(messages) == 9 and out.read_bytes().startswith(original)
    assert not list(tmp_path.glob(".box.mbox.append-journal-*"))
    # A completed append leaves no journal, so the next one sets nothing aside.
    add_messages(root, crafted[8:])
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    assert code == 0 and not any("killed" in w for w in summary["warnings"])
    assert len(list(tmp_path.glob("box.mbox.interrupted-*"))) == 1
    assert len(read_stdlib_mbox(out)) == 9 + len(crafted)  # --append adds the whole selection


def test_a_journal_left_for_a_deleted_mbox_never_cuts_a_new_one(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """A killed append's journal stays when the user deletes that mbox and starts over; the
    filesystem may give the new mbox the old one's inode, which names the journal.  The next
    append sees the journal does not describe this file (the bytes before its start differ)
    and cuts nothing, sets nothing aside."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:8])
    out = tmp_path / "box.mbox"
    out.write_bytes(b"From x@y Mon Jan  1 00:00:00 2024\nSubject: kept\n\nbody\n\n")
    argv = [sys.executable, "-c", _KILLED_APPEND, str(root), str(out)]
    assert subprocess.run(argv, capture_output=True).returncode == 9
    (journal,) = tmp_path.glob(".box.mbox.append-journal-*")
    stale = journal.read_bytes()  # (the new export may get, and clear, that very name)
    for path in tmp_path.glob("box.mbox*"):
        path.unlink()
    assert cli(root, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    fresh = out.read_bytes()
    st = out.stat()  # as if the new mbox had been given the deleted one's inode
    (tmp_path / f".box.mbox.append-journal-{st.st_dev}-{st.st_ino}").write_bytes(stale)
    add_messages(root, crafted[8:9])  # (the same selection again would append nothing)
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    assert code == 0 and not any("killed" in w for w in summary["warnings"]), summary
    assert not list(tmp_path.glob("box.mbox.interrupted-*"))
    assert out.read_bytes().startswith(fresh) and len(read_stdlib_mbox(out)) == 8 + 9


def test_recovery_after_a_kill_mid_write_keeps_names_padding_and_manifest_right(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """The awkward cases of a killed append: it died inside a write (its bytes end mid-line),
    after renaming manifest.jsonl but before manifest.json, and an earlier recovery's
    set-aside file has the name this one would take.  The rerun pads after the original
    content (not after the killed bytes), cuts the manifest back to its own entries, and
    never touches another file."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:8])
    out = tmp_path / "box.mbox"
    assert cli(root, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    original = out.read_bytes()
    entries = Path(f"{out}.manifest.jsonl")
    before = entries.read_text()
    add_messages(root, crafted[8:9])  # (the same selection again would append nothing)
    argv = [sys.executable, "-c", _KILLED_APPEND, str(root), str(out)]
    assert subprocess.run(argv, capture_output=True).returncode == 9
    with out.open("r+b") as f:  # died inside a write: the last line is cut short
        f.truncate(out.stat().st_size - 7)
    entries.write_text(before + before)  # as if its manifest.jsonl had been renamed in
    stamp = datetime.now(UTC)
    precious = []
    for second in range(0, 5):
        moment = datetime.fromtimestamp(stamp.timestamp() + second, UTC)
        other = tmp_path / f"box.mbox.interrupted-{moment.strftime('%Y%m%dT%H%M%SZ')}"
        other.write_bytes(b"an earlier recovery's bytes")
        precious.append(other)
    code, summary = cli_json(root, "export", "--format", "mbox", "--out", str(out), "--append")
    assert code == 0, summary
    assert all(p.read_bytes() == b"an earlier recovery's bytes" for p in precious)
    assert len(list(tmp_path.glob("box.mbox.interrupted-*"))) == len(precious) + 1
    data = out.read_bytes()
    assert data.startswith(original + b"From ")  # padded after the original, as a clean run
    lines = manifest_lines(entries)
    assert len(lines) == 8 + 9 and len(read_stdlib_mbox(out)) == 8 + 9
    for entry in lines:
        cut = data[entry["offset"] : entry["offset"] + entry["length"]]
        assert hashlib.sha256(unquote_mboxrd(cut)).hexdigest() == entry["exported_sha256"]
