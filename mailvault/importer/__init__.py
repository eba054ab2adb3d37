"""`mailvault import`: seed the vault from Maildir trees, mbox files and EML files.

The store-and-commit path is the one fetch uses, with the source as provenance:

    read a message -> BlobWriter (hash + compress while streaming) -> (batch) BlobStore.publish
      -> one catalog transaction: messages rows (dedup by sha256), imports rows, ledger entries
      -> parse and index (mailvault.indexer.catch_up), unless --no-index

so memory stays flat for any message or mbox size, and a crash leaves either committed batches
or tmp/ leftovers that the next writer removes.  Every message read is counted as imported (new
content) or duplicate (content the vault already had, or had earlier in this import); every
entry that could not be stored is in ``rejected`` with its location and the reason; entries
that are not messages by their format's rules are in ``skipped``.  Nothing is dropped silently.
A message whose content was purged by retention is not brought back: it is rejected, and so is
its lf export when its manifest entry or its name names the purged original and its content is
verified to be that (a name alone is a claim: other mail under it is imported, with a warning).  A message
that is an lf export of one the vault holds (its name or manifest entry names the original, and
the original's bytes with CRLF turned into LF are exactly these) is a duplicate of the original:
the round trip "export for a mail client, import back later" stores nothing twice.

The caller does not need to hold the vault lock: ``import_sources`` takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailvault._text import storable
from mailvault.catalog import Catalog, Committed, utcnow
from mailvault.errors import MailvaultError, UsageError
from mailvault.export.blobs import BlobReader, lf_sha256
from mailvault.importer._model import Event, Found, Missed, Rejected, Skipped, Warned
from mailvault.importer.eml import has_eml, read_eml
from mailvault.importer.maildir import contains_maildir, is_maildir, read_maildir
from mailvault.importer.mbox import VARIANTS, looks_like_mbox, read_mbox
from mailvault.store import BlobStore, StagedBlob
from mailvault.vault import Vault

__all__ = ["FORMATS", "ImportReport", "VARIANTS", "detect", "import_sources"]

FORMATS = ("maildir", "mbox", "eml")
SCHEMA_ID = "mailvault/import-report/v1"
Progress = Callable[[int, int], None]  # source bytes done, source bytes in total


@dataclass
class ImportReport:
    account: str | None = None
    sources: list[tuple[Path, str]] = field(default_factory=list)
    started_at: str = ""
    seconds: float = 0.0
    imported: int = 0
    duplicates: int = 0
    bytes: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Warned] = field(default_factory=list)
    index: dict[str, Any] | None = None
    index_error: str | None = None

    @property
    def messages(self) -> int:
        return self.imported + self.duplicates

    @property
    def ok(self) -> bool:
        return not self.rejected and self.index_error is None

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "ok": self.ok,
            "account": self.account,
            "sources": [{"path": str(p), "format": k} for p, k in self.sources],
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "messages": self.messages,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "bytes": self.bytes,
            "rejected": [
                {"path": str(r.path), "offset": r.offset, "length": r.length, "reason": r.reason}
                for r in self.rejected
            ],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
            "warnings": [
                {"path": str(w.path), "offset": w.offset, "message": w.message}
                for w in self.warnings
            ],
            "index": self.index,
            "index_error": self.index_error,
        }


def detect(path: Path, fmt: str = "auto") -> str:
    """The format of an import source, checked against ``fmt`` if one was given."""
    if not (path.exists() or path.is_symlink()):
        raise UsageError(f"{path} does not exist; give the path of a Maildir, mbox or .eml file")
    if fmt not in ("auto", *FORMATS):
        raise UsageError(f"unknown import format {fmt!r}; use auto, {', '.join(FORMATS)}")
    if path.is_dir():
        if fmt == "mbox":
            raise UsageError(f"{path} is a directory; --format mbox needs an mbox file")
        if fmt == "maildir" or (fmt == "auto" and is_maildir(path)):
            if not contains_maildir(path):
                raise UsageError(f"{path} is not a Maildir: it has no cur/ or new/ directory")
            return "maildir"
        if fmt == "eml" and is_maildir(path) and not has_eml(path):
            # its messages are not named .eml: all of them would be skipped, nothing imported
            raise UsageError(
                f"{path} is a Maildir, not a directory of .eml files; import it with "
                "--format maildir (or without --format)"
            )
        if fmt == "eml" or has_eml(path):
            return "eml"
        if contains_maildir(path):
            return "maildir"
        raise UsageError(
            f"cannot tell what {path} holds: no cur/ or new/ (Maildir) and no .eml files; "
            "pass --format"
        )
    if not path.is_file():
        raise UsageError(f"{path} is neither a regular file nor a directory")
    if fmt == "maildir":
        raise UsageError(f"{path} is a file; --format maildir needs a Maildir directory")
    if fmt != "auto":
        return fmt
    if path.suffix.lower() == ".eml":
        return "eml"
    if looks_like_mbox(path) or path.suffix.lower() in (".mbox", ".mbx"):
        return "mbox"
    raise UsageError(
        f"cannot tell what {path} is: not named .eml or .mbox and no From_ line at its start; "
        "pass "
        "--format eml (one message) or --format mbox"
    )


def _events(path: Path, kind: str, mbox_variant: str) -> Iterator[Event]:
    if kind == "maildir":
        return read_maildir(path)
    if kind == "mbox":
        return read_mbox(path, mbox_variant)
    return read_eml(path)


def _source_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "tmp"]
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


@dataclass(frozen=True, slots=True)
class _Pending:
    staged: StagedBlob
    path: Path
    kind: str
    offset: int | None
    original: tuple[str, int] | None = None  # (sha256, size): an exported form of this message

    @property
    def digest(self) -> str:
        return self.staged.digest if self.original is None else self.original[0]


_Known = dict[str, tuple[int, str | None]]  # sha256 -> (size, purged_at) of messages the vault has


class _Committer:
    """Stages messages into the store and commits them in batches (blobs first, then rows)."""

    def __init__(
        self, vault: Vault, report: ImportReport, progress: Progress | None, total: int
    ) -> None:
        self.store: BlobStore = vault.store()
        self.catalog: Catalog = vault.catalog()
        self.report = report
        self.account = report.account
        self.progress = progress
        self.total = total
        self.done = 0
        settings = vault.config.vault
        self.batch_messages = settings.commit_batch_messages
        self.batch_bytes = settings.commit_batch_bytes
        self.batch: list[_Pending] = []
        self.batch_size = 0
        self.batch_digests: set[str] = set()  # of the blobs staged in the batch
        self.reader = BlobReader(self.store)
        self.found_at: dict[str, int | None] = {}  # digest -> offset, in the current source
        self.displaced: list[Missed] = []  # manifest entries whose place another message took

    def close(self) -> None:
        self.catalog.close()

    def discard(self) -> None:
        """The import failed (a full disk, say): remove the staged files of the batch that will
        never be committed, so they do not keep filling the disk that just ran out."""
        for pending in self.batch:
            pending.staged.tmp_path.unlink(missing_ok=True)
        self.batch, self.batch_size = [], 0
        self.batch_digests.clear()

    def _known(self, digests: Iterable[str]) -> _Known:
        """Which of these contents the vault has (or had: purged), with their sizes."""
        wanted = sorted(set(digests))
        rows = self.catalog.db.execute(
            "SELECT sha256, size, purged_at FROM messages "
            f"WHERE sha256 IN ({', '.join('?' * len(wanted))})",
            wanted,
        )
        return {str(h): (int(size), purged) for h, size, purged in rows}

    def _exported_form_of(
        self, found: Found, digest: str, claimed: set[str], known: _Known
    ) -> tuple[str, int] | None:
        """The live message (sha256, size) whose lf export these bytes (``digest``) are, if
        their name or manifest entry names it (``claimed``) and converting its stored bytes
        gives exactly them: verified, not trusted.  A claim that does not hold is a warning."""
        if digest in known or not claimed:
            return None  # the vault has these very bytes (a plain duplicate), or no claim
        originals = sorted(h for h in claimed if h in known and not known[h][1])  # live ones
        unreadable = False
        for original in originals:
            converted = lf_sha256(self.reader, original, known[original][0])
            if converted == digest:
                return original, known[original][0]
            unreadable |= converted is None
        if originals:
            why = (
                "whose stored copy cannot be read (run `mailvault verify`)"
                if unreadable
                else "but its content is neither that message nor its lf form (edited since?)"
            )
            self.report.warnings.append(
                Warned(
                    found.path,
                    found.offset,
                    f"named by its {'export manifest' if found.kind == 'mbox' else 'file name'} "
                    f"as an export of {' or '.join(originals)}, which the vault holds, {why}: "
                    "imported as new content",
                )
            )
        return None

    def add(self, found: Found) -> None:
        writer = self.store.writer()
        try:
            for chunk in found.chunks:
                writer.write(chunk)
        except OSError as exc:  # reading the source; the vault side raises StoreError
            writer.abort()
            self.report.rejected.append(
                Rejected(found.path, found.offset, f"read error: {exc.strerror or exc}")
            )
            return
        except BaseException:
            writer.abort()
            raise
        staged = writer.finish()
        self.done += staged.size
        reason: str | None = None
        original: tuple[str, int] | None = None
        if staged.size == 0 and not found.allow_empty:
            self.report.warnings.append(
                Warned(found.path, found.offset, "empty (0 bytes); stored as an empty message")
            )
        if (
            found.expect
            and staged.digest not in found.expect
            and found.listed_elsewhere is not None
            and found.listed_elsewhere(staged.digest)
        ):
            self.report.warnings.append(
                Warned(
                    found.path,
                    found.offset,
                    "the export manifest places another message here; this one is a message it "
                    "lists at another offset (an edit before it shifted it): imported",
                )
            )
            # and the message the manifest places here was not found here: settled at the end
            # of the file like any entry without its message (found elsewhere, or rejected)
            if found.offset is not None:
                self.displaced.append(Missed(found.path, found.offset, None, found.expect))
        elif found.expect and staged.digest not in found.expect:
            reason = (
                f"content (sha256 {staged.digest}) does not match the export manifest's "
                f"{' or '.join(sorted(found.expect))}: the file is damaged here"
            )
        else:
            reason, original = self._check_known(found, staged.digest, staged.size)
        if reason is not None:
            staged.tmp_path.unlink(missing_ok=True)
            self.report.rejected.append(Rejected(found.path, found.offset, reason))
        else:
            self.found_at.setdefault(staged.digest, found.offset)
            if original is not None:  # nothing new to store: the original is the content
                staged.tmp_path.unlink(missing_ok=True)
            else:
                self.batch_digests.add(staged.digest)
            self.batch.append(_Pending(staged, found.path, found.kind, found.offset, original))
            self.batch_size += staged.size
            if len(self.batch) >= self.batch_messages or self.batch_size >= self.batch_bytes:
                self.flush()
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def _check_known(
        self, found: Found, digest: str, length: int
    ) -> tuple[str | None, tuple[str, int] | None]:
        """(why these bytes (``length`` of them) are rejected, or None; the original they are
        an export of, if so)."""
        claimed = _claimed(found, digest)
        if claimed & self.batch_digests:
            self.flush()  # the original came earlier in this import: committed, it can be read
        known = self._known([digest, *found.expect, *_named(found)])
        reason = self._purged(found, digest, length, known)
        if reason is not None:
            return reason, None
        return None, self._exported_form_of(found, digest, claimed, known)

    def _purged(self, found: Found, digest: str, length: int, known: _Known) -> str | None:
        """Why these bytes are purged mail, not to be brought back, or None.

        They are the purged message itself, or its lf export: an mbox manifest entry that
        lists these very bytes names the purged original, or a file name does (Maildir
        ``,H=<sha256>``, ``<sha256>.eml``) and the content is that message's lf form, as its
        purge entry recorded it (``lf_sha256``).  A name is only a claim: a file named after a
        purged message whose content is other mail is imported, with a warning."""
        purged = {h: at for h, (_, at) in known.items() if at}
        if not purged:
            return None
        if digest in purged:
            return f"this content was purged from the vault at {purged[digest]}; not imported again"
        listed = sorted(h for h in found.expect if h in purged)  # mbox: matches the entry
        if listed:
            return (
                f"this is an lf export of {listed[0]}, purged from the vault at "
                f"{purged[listed[0]]} (its export manifest says so); not imported again"
            )
        for original in sorted(h for h in _named(found) if h in purged):
            size = known[original][0]
            is_lf = self._is_lf_form_of_purged(original, size, digest, length)
            if is_lf is None:
                return (
                    f"named as an export of {original}, purged from the vault at "
                    f"{purged[original]} before purges recorded what its lf form hashes to, and "
                    "its size fits that form, so it may be that mail: not imported (if it is "
                    "other mail, rename the file so that its name does not carry that hash)"
                )
            if is_lf:
                return (
                    f"this is an lf export of {original}, purged from the vault at "
                    f"{purged[original]}; not imported again"
                )
            self.report.warnings.append(
                Warned(
                    found.path,
                    found.offset,
                    f"named as an export of {original}, which was purged, but its content is "
                    "neither that message nor its lf form: imported as new content",
                )
            )
        return None

    def _is_lf_form_of_purged(
        self, original: str, size: int, digest: str, length: int
    ) -> bool | None:
        """Whether ``digest`` (``length`` bytes) is the lf form of the purged ``original`` (of
        ``size`` bytes):
        as its purge entry recorded it, else by size alone (the lf form of a message with a
        CRLF is shorter, by at most half), None when the size cannot rule it out."""
        rows = self.catalog.db.execute(
            "SELECT detail FROM ledger WHERE kind = 'purge' AND sha256 = ?", (original,)
        ).fetchall()
        for (detail,) in rows:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                recorded = json.loads(detail).get("lf_sha256")
                if isinstance(recorded, str):
                    return recorded == digest
        if not (size + 1) // 2 <= length < size:
            return False
        return None

    def flush(self) -> None:
        """Publish the batch's blobs, then record it in one catalog transaction."""
        batch, self.batch, self.batch_size = self.batch, [], 0
        self.batch_digests.clear()
        if not batch:
            return
        try:
            self.store.publish(p.staged for p in batch if p.original is None)
        except BaseException:
            self.batch = batch  # discarded by the caller
            raise
        now = utcnow()
        report = self.report
        with self.catalog.transaction() as conn:
            for p in batch:
                # a file name is any bytes (a Latin-1 name unzipped from a Windows archive):
                # stored escaped, as SQLite text cannot hold it otherwise
                source = storable(str(p.path))
                detail: dict[str, Any] = {} if p.offset is None else {"offset": p.offset}
                if p.original is not None:
                    detail["exported_sha256"] = p.staged.digest  # the bytes that were read
                fresh, _ = self.catalog.record_ingest(
                    Committed(p.digest, p.original[1] if p.original else p.staged.size, None, now),
                    source=f"import:{source}",
                    now=now,
                    account=self.account,
                    detail=detail or None,
                )
                conn.execute(
                    "INSERT INTO imports(sha256, account, source, source_kind, source_offset, "
                    "imported_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (p.digest, self.account, source, p.kind, p.offset, now),
                )
                if fresh:
                    report.imported += 1
                else:
                    report.duplicates += 1
                report.bytes += p.staged.size


def import_sources(
    vault: Vault,
    paths: Sequence[Path],
    *,
    fmt: str = "auto",
    account: str | None = None,
    mbox_variant: str = "mboxrd",
    index: bool = True,
    progress: Progress | None = None,
) -> ImportReport:
    """Import every message of ``paths`` (each a Maildir, mbox, .eml file or .eml directory).

    Raises:
        UsageError: a path is missing or of the wrong kind, a bad option.
        VaultLocked, StoreError, CatalogError: the vault cannot take the messages.
    """
    if mbox_variant not in VARIANTS:
        raise UsageError(f"unknown mbox variant {mbox_variant!r}; use {' or '.join(VARIANTS)}")
    if account is not None and not account.strip():
        raise UsageError("--account needs a non-empty name")
    sources = [(Path(os.path.abspath(p)), detect(Path(p), fmt)) for p in paths]
    if not sources:
        raise UsageError("nothing to import: give at least one PATH")
    report = ImportReport(account=account, sources=sources, started_at=utcnow())
    started = time.monotonic()
    total = sum(_source_bytes(p) for p, _ in sources) if progress is not None else 0
    with vault.write_lock("import"):
        vault.store().clean_tmp()
        committer = _Committer(vault, report, progress, total)
        try:
            for path, kind in sources:
                committer.found_at.clear()
                missed: list[Missed] = []
                for event in _events(path, kind, mbox_variant):
                    if isinstance(event, Found):
                        committer.add(event)
                    elif isinstance(event, Rejected):
                        report.rejected.append(event)
                    elif isinstance(event, Skipped):
                        report.skipped.append(event)
                    elif isinstance(event, Missed):
                        missed.append(event)
                    else:
                        report.warnings.append(event)
                missed += committer.displaced
                committer.displaced.clear()
                _settle_missed(missed, committer.found_at, report)
            committer.flush()
        except BaseException:
            committer.discard()
            raise
        finally:
            committer.close()
        if index and report.messages:
            _catch_up(vault, report)
    report.seconds = time.monotonic() - started
    return report


_NAMED_HASH = re.compile(r"(?:,H=|^)([0-9a-f]{64})(?:[:,.]|$)")


def _named(found: Found) -> list[str]:
    """The vault hash an exported file's name carries: Maildir ``,H=<sha256>``, EML
    ``<sha256>.eml`` (what mailvault export writes)."""
    if found.kind == "mbox":
        return []
    match = _NAMED_HASH.search(found.path.name)
    return [match.group(1)] if match else []


def _claimed(found: Found, digest: str) -> set[str]:
    """The vault messages these bytes (``digest``) say they are an export of, other than
    themselves: the original a matching mbox manifest entry lists, or a file name's hash."""
    if found.kind == "mbox":
        return set(found.expect) - {digest} if digest in found.expect else set()
    return set(_named(found)) - {digest}


def _settle_missed(
    missed: list[Missed], found_at: dict[str, int | None], report: ImportReport
) -> None:
    """A manifest entry with no message at its offset is a lost message, unless its content was
    stored from elsewhere in the same file: then the file was only edited before it."""
    for m in missed:
        elsewhere = [found_at[h] for h in sorted(m.hashes) if h in found_at]
        if m.offset in elsewhere:  # found right there after all (an entry listed twice)
            continue
        if elsewhere:
            report.warnings.append(
                Warned(
                    m.path,
                    m.offset,
                    "the export manifest places a message here; it was found at byte "
                    f"{elsewhere[0]} instead (the file was edited before it) and taken from there",
                )
            )
        else:
            report.rejected.append(
                Rejected(
                    m.path,
                    m.offset,
                    "the export manifest lists a message here that the file no longer has "
                    "(damaged or edited mbox)",
                    m.length,
                )
            )


def _catch_up(vault: Vault, report: ImportReport) -> None:
    """Parse and index what was imported; a failure here leaves the import committed."""
    from mailvault.indexer import catch_up, lag_note

    try:
        report.index = catch_up(vault).as_json()
    except MailvaultError as exc:  # the mail is safe; only the derived index lags
        report.index_error = lag_note(exc)
