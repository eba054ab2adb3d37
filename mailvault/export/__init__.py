"""`mailvault export`: copy messages out of the vault as Maildir, mbox (mboxrd) or EML files.

Per selected message (see ``selection.py`` for the selection and its order), in one of two ways:

* Small messages (nearly all; see ``blobs.WHOLE_MAX``) that the target does not hold yet are
  prepared whole by ``pipeline.py``, in worker processes when there are enough of them: the blob
  read in one piece and re-hashed (a blob that no longer matches its name is left to the
  streaming path, which stops the export), the header fields found, CRLF turned into LF if asked
  (``exported_sha256`` then records the converted bytes), then ``From `` lines quoted (mbox) or
  the message written to a temporary file (Maildir, EML).  The main process places them in
  selection order: the mbox writes, the renames of each durable batch, the manifest lines.
* Everything else goes through ``Exporter.one`` in the main process: if the target already
  holds the message (Maildir/EML re-export), hash that file, and if it is right list it and move
  on, if not say so and write a fresh copy; otherwise stream the blob (flat memory for any
  size), re-hashing it on the way, peek at the header block (at most 1 MiB), convert, and hand
  the stream to the target.

When every message is durable, the manifest (``manifest.py``) is put in place and the export
recorded in the audit log.  An mbox export that repeats the export the mbox ends with (the same
fingerprint, ``_fingerprint``, recorded in its manifest; the file unchanged since) writes
nothing: a rerun after a kill that left no journal must not give every message a second copy.

Nothing here imports click: the CLI passes a progress callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailvault import __version__
from mailvault.catalog import Catalog, utcnow
from mailvault.errors import MailvaultError, UsageError
from mailvault.export._errors import ExportError, target_error
from mailvault.export._target import Target
from mailvault.export.blobs import lf_digest, stream_verified
from mailvault.export.eml import EmlTarget
from mailvault.export.maildir import MaildirTarget
from mailvault.export.manifest import (
    SCHEMA_ID,
    ManifestWriter,
    check_writable_manifest,
    manifest_paths,
    read_summary,
    render_entry,
)
from mailvault.export.mbox import MboxTarget
from mailvault.export.pipeline import Pipeline, Prepared, worker_count
from mailvault.export.selection import Selected, Selection
from mailvault.export.transform import MessageMeta, message_meta, peek_header, to_lf
from mailvault.store import READ_CHUNK, BlobStore
from mailvault.vault import Vault

__all__ = ["ExportError", "ExportOptions", "FORMATS", "export", "default_line_endings"]

FORMATS = ("maildir", "mbox", "eml")
SNIFFED_FILES = 32  # existing files looked at, at most, to tell their line endings
Progress = Callable[[int, int], None]  # messages done, messages selected


def default_line_endings(fmt: str) -> str:
    """lf for Maildir and mbox (what local mail tools expect), crlf (exact bytes) for EML."""
    return "crlf" if fmt == "eml" else "lf"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    fmt: str
    out: Path
    line_endings: str | None = None
    manifest: bool = True
    append: bool = False
    query: str | None = None
    account: str | None = None


@dataclass
class _Run:
    count: int = 0
    added: int = 0
    skipped: int = 0
    total_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    unindexed: int = 0  # archived messages the query could not see (not indexed yet)
    purged_meanwhile: list[str] = field(default_factory=list)  # by a retention run, not written


class _Hashing:
    """Passes chunks through, hashing and counting them."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.hash = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.hash.update(chunk)
            yield chunk


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _make_target(options: ExportOptions, out: Path, line_endings: str) -> Target:
    if options.fmt == "maildir":
        return MaildirTarget(out, line_endings)
    if options.fmt == "eml":
        return EmlTarget(out, line_endings)
    return MboxTarget(out, append=options.append)


class _Exporter:
    def __init__(self, vault: Vault, options: ExportOptions, out: Path, line_endings: str) -> None:
        self.vault = vault
        self.options = options
        self.out = out
        self.lf = line_endings == "lf"
        self.line_endings = line_endings
        self.store: BlobStore = vault.read_store()
        self.target = _make_target(options, out, line_endings)
        self.run = _Run()

    def _meta(self, src: Selected) -> MessageMeta:
        chunks = stream_verified(self.store, src.sha256)
        try:
            header, _ = peek_header(chunks)
        finally:
            chunks.close()  # releases the blob file now, not at garbage collection
        return message_meta(header, src.ingested)

    def _purged_since(self, digest: str) -> bool:
        """Whether a retention run purged the message after the selection was taken (export
        takes no vault lock): its blob is then gone, and its absence is no damage."""
        import sqlite3

        from mailvault.vault import read_only_uri

        try:
            db = sqlite3.connect(read_only_uri(self.vault.catalog_path), uri=True, timeout=10)
            try:
                sql = "SELECT purged_at FROM messages WHERE sha256 = ?"
                row = db.execute(sql, (digest,)).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return False
        return row is not None and row[0] is not None

    def _lf_hash(self, digest: str) -> str:
        return lf_digest(self.store, digest)

    def _existing(self, src: Selected) -> tuple[tuple[str, int] | None, str | None]:
        """((manifest line, size) of a correct copy already in the target, None), else (None,
        the bad copy if there is one)."""
        bad: str | None = None
        for relative in self.target.find(src.sha256):
            path = self.target.resolve(relative)
            try:
                actual, size = _hash_file(path)
            except OSError as exc:
                self.run.warnings.append(
                    f"{relative}: unreadable ({exc.strerror}); wrote a fresh copy"
                )
                bad = relative
                continue
            expected = self._lf_hash(src.sha256) if self.lf else src.sha256
            if actual == expected:
                line = render_entry(
                    src.sha256,
                    self._meta(src),
                    size,
                    path=relative,
                    exported_sha256=actual if self.lf else None,
                )
                return (line, size), None
            self.run.warnings.append(
                f"{relative}: content does not match {src.sha256} (changed after export?); "
                + self.target.changed_copy(relative)
            )
            bad = relative
        return None, bad

    def check_line_endings(self) -> None:
        """Refuse a target holding messages in the other line-ending form.

        A finished export's manifest says which form its files have (``check_previous_export``);
        one killed before its manifest leaves only the files.  Adding the other form would
        give every message already there a second copy (Maildir) or rewrite it (EML), and
        leave a target whose files disagree with its manifest.  The first existing file whose
        two forms differ (the message has a CRLF) decides; a file matching neither (edited)
        decides nothing, and ``_existing`` deals with it.
        """
        for digest, relative in self.target.held(SNIFFED_FILES):
            try:
                lf = self._lf_hash(digest)
                actual, _ = _hash_file(self.target.resolve(relative))
            except (OSError, MailvaultError):  # not in this vault, damaged, unreadable
                continue  # (a selected message's problem is reported when it is exported)
            if lf == digest:
                continue  # no CRLF in it: both forms are the same bytes
            ours, theirs = (lf, digest) if self.lf else (digest, lf)
            if actual == ours:
                return
            if actual == theirs:
                other = "crlf" if self.lf else "lf"
                raise ExportError(
                    f"{self.out} holds messages exported with --line-endings {other} (by an "
                    f"export that did not finish); rerun with --line-endings {other}, or export "
                    f"{self.line_endings} into a new or empty directory"
                )

    def placed(self, src: Selected, run_fd: int, item: Prepared) -> str:
        """Put a message prepared whole in place; its manifest line."""
        self.run.count += 1
        self.run.added += 1
        self.run.total_bytes += item.size
        if item.tmp:
            self.target.place_staged(src.sha256, item.tmp, item.relative, item.size)
            return item.line
        offset = self.target.place_record(run_fd, item.start, item.end, item.from_len)
        return f"{item.line}{offset}{item.tail}"

    def one(self, src: Selected) -> str | None:
        """Export one message in the main process, streamed (flat memory for any size); its
        manifest line, or None when a retention run purged it after it was selected."""
        self.run.count += 1
        existing, bad = self._existing(src)
        if existing is not None:
            line, size = existing
            self.run.skipped += 1
            self.run.total_bytes += size
            return line
        try:
            header, chunks = peek_header(stream_verified(self.store, src.sha256))
        except ExportError:
            if not self._purged_since(src.sha256):
                raise
            self.run.count -= 1
            self.run.purged_meanwhile.append(src.sha256)
            return None
        meta = message_meta(header, src.ingested)
        body: Iterable[bytes] = to_lf(chunks) if self.lf else chunks
        hashing = _Hashing(body)
        placed = self.target.write(src.sha256, meta, hashing, bad)
        self.run.added += 1
        self.run.total_bytes += placed.size
        return render_entry(
            src.sha256,
            meta,
            placed.size,
            path=placed.path,
            offset=placed.offset,
            exported_sha256=hashing.hash.hexdigest() if self.lf else None,
        )


def _audit(
    vault: Vault, options: ExportOptions, out: Path, line_endings: str, count: int, **outcome: Any
) -> None:
    """An audit-trail entry (the trail has no off switch): one before the first byte is
    written, with the messages selected (so no export goes unrecorded, even one that is killed
    or fails), and one once it is complete, with what it wrote and its manifest's sha256."""
    from mailvault.audit import record as record_audit

    record_audit(
        vault.root,
        "export",
        options.query,
        count,
        stage="finished" if outcome else "started",
        format=options.fmt,
        target=str(out),
        account=options.account,
        line_endings=line_endings,
        **outcome,
    )


Report = Callable[[dict[str, Any]], None]  # shows the summary of a finished export


def export(
    vault: Vault,
    options: ExportOptions,
    *,
    progress: Progress | None = None,
    report: Report | None = None,
) -> dict[str, Any]:
    """Run one export; returns its summary (the ``manifest.json`` document).

    ``report`` is given the summary once the export is recorded as finished, while the target
    is still locked and an mbox's journal still there: a run killed before it has reported is
    recognised by its rerun as finished (nothing written again), one killed after it is done.

    Raises:
        UsageError: bad options, unknown account, query without an index.
        ExportError: the target is of the wrong kind, unwritable or full (nothing half-written
            is left), or a blob is damaged.
    """
    if options.fmt not in FORMATS:
        raise UsageError(f"unknown export format {options.fmt!r}; use one of {', '.join(FORMATS)}")
    if options.append and options.fmt != "mbox":
        raise UsageError("--append applies to --format mbox only")
    line_endings = options.line_endings or default_line_endings(options.fmt)
    if line_endings not in ("lf", "crlf"):
        raise UsageError(f"unknown line endings {line_endings!r}; use lf or crlf")
    out = Path(os.path.abspath(options.out))
    catalog = vault.catalog()
    exporter: _Exporter | None = None
    try:
        try:
            exporter = _Exporter(vault, options, out, line_endings)
            done = _write(vault, catalog, exporter, progress)
        except OSError as exc:  # anything not mapped closer to where it happened
            raise target_error("exporting to", out, exc) from None
        _finish_audit(vault, options, out, line_endings, done)
        if report is not None:
            report(done.summary)
        done.cleanup()  # last: until here a rerun takes the run for finished, not for new
    finally:
        if exporter is not None:
            exporter.target.unlock()
        catalog.close()
    return done.summary


def _nothing() -> None:
    """No clean-up: a Maildir or EML export leaves nothing to remove once it is recorded."""


@dataclass
class _Done:
    """An export whose messages and manifest are in place, not yet recorded as finished."""

    summary: dict[str, Any]
    manifest: Path | None  # the manifest.json to record the sha256 of
    recovered: str | None = None  # the run found finished by a rerun (mbox)
    cleanup: Callable[[], None] = _nothing  # what goes once the run is recorded and reported
    repeat_of: str | None = None  # the run this one repeated, writing nothing (mbox)


def _write(vault: Vault, catalog: Catalog, exporter: _Exporter, progress: Progress | None) -> _Done:
    """Everything up to the manifest in place, or a killed run of this export found finished."""
    options, out, line_endings = exporter.options, exporter.out, exporter.line_endings
    started = utcnow()
    selection = Selection(vault, catalog, query=options.query, account=options.account)
    total = selection.count()
    if selection.unindexed:
        exporter.run.unindexed = selection.unindexed
        exporter.run.warnings.append(
            f"{selection.unindexed} archived messages are not indexed yet, so the query "
            "could not match them: run `mailvault index` and export again"
        )
    if total == 0:
        exporter.run.warnings.append(
            "nothing to export: "
            + ("the query matched no messages" if options.query else "the selection is empty")
            + (f" of account {options.account}" if options.account else "")
        )
    paths = manifest_paths(options.fmt, out)
    if options.manifest:
        check_writable_manifest(paths)
    previous = read_summary(paths[1]) if options.append else None
    if previous is not None and previous.get("line_endings") != line_endings:
        raise ExportError(
            f"{out} was exported with --line-endings {previous.get('line_endings')}; "
            "append with the same, or export into a new file"
        )
    _audit(vault, options, out, line_endings, total)
    exporter.target.open()
    mbox = exporter.target if isinstance(exporter.target, MboxTarget) else None
    writer: ManifestWriter | None = None
    try:
        key = _selection_key(options, line_endings, vault.vault_id)
        if mbox is not None and mbox.completed is not None:  # a killed run, finished now
            if mbox.completed.get("selection") == _fingerprint(key, selection):
                summary = _finished_before(exporter, started, mbox)
                mbox.abort()  # this run wrote nothing
                return _Done(summary, paths[1], summary["run"], cleanup=mbox.forget_completed)
            if not options.append:
                mbox.forget_completed()
                raise mbox.refusal()
            mbox.start_append()  # another export: appended after it
        if mbox is not None and mbox.last_run is not None:  # the mbox ends with an export
            last = mbox.last_run
            if last["written"].get("selection") == _fingerprint(key, selection):
                summary = _repeated(exporter, started, last)
                mbox.abort()  # nothing written; an append's journal goes
                return _Done(summary, paths[1], repeat_of=str(last.get("run")))
            if not options.append:
                raise mbox.refusal()
        exporter.check_line_endings()
        if options.manifest:
            writer = ManifestWriter(*paths, keep_existing=options.append and options.fmt == "mbox")
        pipeline = Pipeline(
            exporter.store,
            exporter.target,
            lf=exporter.lf,
            total=total,
            workers=worker_count(),
        )
        written: set[str] | None = set() if writer is not None and mbox is None else None
        fingerprint = _export_messages(
            exporter, pipeline, selection, total, key, writer, progress, written
        )
        exporter.target.close()
        summary = _summary(exporter, options, line_endings, vault, started, paths[0])
        if mbox is not None:
            summary["written"] = mbox.written(fingerprint)
        if writer is not None:
            if mbox is not None and options.append:
                summary["append"]["previous_entries"] = writer.previous_entries
            if written is not None and (kept := _carry_over(exporter, writer, written)):
                summary["earlier_entries"] = kept
            writer.prepare(summary)
        if mbox is not None:
            mbox.commit(
                {
                    "selection": fingerprint,
                    "manifest": None if writer is None else list(map(str, writer.temp_paths)),
                    "count": summary["count"],
                    "total_bytes": summary["total_bytes"],
                }
            )
        if writer is not None:
            writer.install()
    except BaseException:
        exporter.target.abort()
        if writer is not None and not (mbox is not None and mbox.committed):
            writer.abort()  # a committed run's prepared manifest is its rerun's to put in
        raise
    # The journal stays until the run is recorded and reported (see ``export``).
    return _Done(summary, paths[1] if writer else None, cleanup=mbox.finished if mbox else _nothing)


def _export_messages(
    exporter: _Exporter,
    pipeline: Pipeline,
    selection: Selection,
    total: int,
    key: bytes,
    writer: ManifestWriter | None,
    progress: Progress | None,
    written: set[str] | None = None,
) -> str:
    """Every selected message into the target, its line into the manifest (and its sha256
    into ``written``); the fingerprint of the export (``_fingerprint``)."""
    fingerprint = hashlib.sha256(key)
    with pipeline:
        for done, (src, run_fd, item) in enumerate(pipeline.messages(selection), 1):
            line = exporter.placed(src, run_fd, item) if item is not None else exporter.one(src)
            if line is None:  # purged meanwhile: as if not selected (as a rerun selects)
                continue
            fingerprint.update(src.sha256.encode())
            if written is not None:
                written.add(src.sha256)
            if writer is not None:
                writer.add_line(line)
            if progress is not None:
                progress(done, total)
    return fingerprint.hexdigest()


def _carry_over(exporter: _Exporter, writer: ManifestWriter, written: set[str]) -> int:
    """The entries of the Maildir's or EML directory's manifest that this run did not write
    again and whose message is still there (under the name it has now: a mail client renames
    a Maildir file when it sets a flag): an export of another selection into the same target
    replaced the manifest, which then listed a part of what the target holds."""

    def still_there(entry: dict[str, Any]) -> dict[str, Any] | None:
        digest = entry.get("sha256")
        if not isinstance(digest, str) or digest in written:
            return None
        names = exporter.target.find(digest)
        if not names:
            return None
        if entry.get("path") not in names:
            entry["path"] = names[0]
        return entry

    return writer.carry_over(still_there)


def _finish_audit(
    vault: Vault, options: ExportOptions, out: Path, line_endings: str, done: _Done
) -> None:
    """The "finished" audit entry, with the sha256 of the manifest in place (and, for a rerun
    that found this export finished by a killed run, that run's id: ``recovered``)."""
    summary = done.summary
    manifest_sha256 = None
    if done.manifest is not None and options.manifest:
        with contextlib.suppress(FileNotFoundError):
            manifest_sha256, _ = _hash_file(done.manifest)
    extra = {} if done.recovered is None else {"recovered": done.recovered}
    if done.repeat_of is not None:
        extra["repeat_of"] = done.repeat_of
    _audit(
        vault,
        options,
        out,
        line_endings,
        summary["count"],
        added=summary["added"],
        total_bytes=summary["total_bytes"],
        manifest_sha256=manifest_sha256,
        **extra,
    )


def _selection_key(options: ExportOptions, line_endings: str, vault_id: str) -> bytes:
    """What, with the selected messages in order, makes two exports the same one."""
    fields = [options.fmt, line_endings, options.query, options.account, vault_id]
    return json.dumps(fields).encode()


def _fingerprint(key: bytes, selection: Iterable[Selected]) -> str:
    """sha256 of the key and the selection's digests in order, as the export loop hashes them."""
    h = hashlib.sha256(key)
    for src in selection:
        h.update(src.sha256.encode())
    return h.hexdigest()


def _summary(
    exporter: _Exporter,
    options: ExportOptions,
    line_endings: str,
    vault: Vault,
    started: str,
    entries: Path,
) -> dict[str, Any]:
    """The ``manifest.json`` document of a run that wrote its messages."""
    run = exporter.run
    summary: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "format": options.fmt,
        "line_endings": line_endings,
        "query": options.query,
        "account": options.account,
        "count": run.count,
        "total_bytes": run.total_bytes,
        "added": run.added,
        "skipped": run.skipped,
        "started_at": started,
        "finished_at": utcnow(),
        "vault_id": vault.vault_id,
        "mailvault_version": __version__,
        "entries": entries.name,
        "warnings": run.warnings,
    }
    if run.unindexed:
        summary["unindexed"] = run.unindexed
    if run.purged_meanwhile:  # one line however many: a big purge must not flood the terminal
        first, more = run.purged_meanwhile[0], len(run.purged_meanwhile) - 1
        run.warnings.append(
            f"{first}{f' and {more} more' if more else ''}: purged by a retention run during "
            "this export, so not exported"
        )
    target = exporter.target
    if isinstance(target, MboxTarget):
        summary["mbox_variant"] = "mboxrd"
        summary["run"] = target.run_id
        if options.append:
            summary["append"] = {
                "offset": target.start_offset,
                "previous_entries": 0,
                "run": target.run_id,
            }
        run.warnings[:0] = _set_aside_note(target, "this run appended in their place")
    return summary


def _set_aside_note(target: MboxTarget, then: str) -> list[str]:
    """The warning that a killed append's bytes were set aside (``_recover``), if they were."""
    if target.set_aside is None:
        return []
    aside, offset, length = target.set_aside
    return [
        f"an earlier export --append into {target.out} was killed: the {length} bytes it had "
        f"written after offset {offset} were set aside in {aside}, and {then}"
    ]


def _finished_before(exporter: _Exporter, started: str, mbox: MboxTarget) -> dict[str, Any]:
    """The summary of a rerun that found this very export finished by a run killed before it
    could exit (see ``MboxTarget.commit``): nothing written, each message already there."""
    done = mbox.completed or {}
    return _nothing_written(
        exporter,
        started,
        done,
        [
            f"this export had already finished into {mbox.out} (run {done.get('run')}) when "
            "it was killed, before it could exit: its manifest is in place now and nothing "
            "was written again"
        ],
    )


def _repeated(exporter: _Exporter, started: str, last: dict[str, Any]) -> dict[str, Any]:
    """The summary of an mbox export that repeats the one the mbox ends with (``last``, its
    manifest summary): the same selection, the file unchanged since.  Writing it again would
    give every message a second copy (what a rerun after a kill past the journal's removal,
    or a cron job retrying, would do), so nothing is written."""
    options, out = exporter.options, exporter.out
    run, at = last.get("run"), last.get("finished_at")
    if options.append:
        note = (
            f"this exact selection was the last thing exported into {out} (run {run}, at "
            f"{at}) and the mbox still ends with it: nothing appended (to have each of its "
            "messages twice, export into a new --out and concatenate the two files)"
        )
    else:
        note = (
            f"already exported into {out} (run {run}, at {at}), which is unchanged since "
            "(its size and last 64 KiB): nothing written"
        )
    assert isinstance(exporter.target, MboxTarget)
    cut = _set_aside_note(exporter.target, "the mbox was cut back to where it began")
    return _nothing_written(exporter, started, last, [*cut, note, *exporter.run.warnings])


def _nothing_written(
    exporter: _Exporter, started: str, done: dict[str, Any], warnings: list[str]
) -> dict[str, Any]:
    """The summary of an mbox export that found its messages there already, exported by run
    ``done["run"]`` (its journal or manifest summary: ``count``, ``total_bytes``)."""
    options, vault = exporter.options, exporter.vault
    count = done.get("count")
    count = count if isinstance(count, int) else 0
    total_bytes = done.get("total_bytes")
    unindexed = {"unindexed": exporter.run.unindexed} if exporter.run.unindexed else {}
    return {
        **unindexed,
        "schema": SCHEMA_ID,
        "format": options.fmt,
        "line_endings": exporter.line_endings,
        "query": options.query,
        "account": options.account,
        "count": count,
        "total_bytes": total_bytes if isinstance(total_bytes, int) else 0,
        "added": 0,
        "skipped": count,
        "started_at": started,
        "finished_at": utcnow(),
        "vault_id": vault.vault_id,
        "mailvault_version": __version__,
        "entries": manifest_paths("mbox", exporter.out)[0].name,
        "warnings": warnings,
        "mbox_variant": "mboxrd",
        "run": str(done.get("run")),
    }
