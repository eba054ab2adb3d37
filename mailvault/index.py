"""The Tantivy search index: the one place its schema, tokenizers and on-disk layout are declared.

The index is derived data: ``mailvault reindex`` rebuilds it from the object store and the
catalog alone.  It holds one document per message content (per sha256): ``IndexWriter`` always
deletes by the ``id`` term before it adds, so re-indexing a message after a crash never makes a
second document.

Text analysis (tokenizer ``mv_text``, used by every free-text field):

* words are runs of letters and digits (Unicode ``is_alphanumeric``, tantivy's SimpleTokenizer),
  so Latin, Cyrillic, Greek, Hebrew, Arabic and Hangul words are single tokens; scripts with
  combining vowel signs (Devanagari, Thai, ...) are split at those signs, and a query word is
  split the same way and searched as a phrase of its pieces;
* Han ideographs, Hiragana and Katakana are indexed one character per token (unigrams, as
  Lucene's StandardTokenizer does): :func:`normalize` puts an invisible WORD JOINER (U+2060,
  not alphanumeric, so a token boundary) between two adjacent CJK characters, on the indexed
  text and on the query alike, and :func:`display` removes it from stored text before it is
  shown.  A query for a CJK run is therefore a phrase of its characters, so ``東京`` finds the two
  characters adjacent anywhere: substring search, no dictionary segmentation.  Scripts written
  without spaces other than these (Thai, Lao, Khmer, Burmese) are indexed as whole runs: only
  a whole run between spaces/punctuation matches;
* case is folded (lower-case) and accents are folded to ASCII where an ASCII form exists
  (``Café`` = ``cafe``, ``Straße`` = ``strasse``); there is no stemming and no stop-word list;
* text is NFC-normalised before indexing and querying, so decomposed accents fold too;
* tokens longer than 64 bytes (base64 debris, hashes) are dropped.

(A regex tokenizer could do the CJK split inside tantivy, but it indexes three times slower
than the SimpleTokenizer; the joiner costs one regex substitution on non-ASCII text only.)

Keyword fields (``message_id``, ``thread``, ``account``, ``*_addr``) are one token per value:
:func:`exact` NFC-normalises them (without joiners) when indexing and querying alike, so an id,
account or address with CJK or decomposed characters matches however it is typed.

Addresses are indexed twice: in ``from``/``to``/``cc``/``bcc`` as text (display name and the
address split into words: ``from:alice``, ``from:example.com``) and in ``*_addr`` fields as one
lower-cased token each, which is how ``from:alice@example.com`` matches exactly.

Layout inside the vault: ``index/`` is the live index with ``mailvault-index.json`` (format
marker, schema version).  ``reindex`` builds ``index.new/`` and writes its marker last, so a
marker means "complete"; the swap is ``index`` -> ``index.old``, ``index.new`` -> ``index``,
remove ``index.old``.  :func:`recover` finishes or undoes an interrupted swap, and removes a file
(anything but a directory) found in any of these three places.

Tantivy checks no checksum as it reads, so a damaged segment file surfaces as an error, garbage
or a Rust panic wherever a read touches the damage: :func:`reading` turns each into the one-line
:class:`~mailvault.errors.IndexDamaged`, and :func:`check_files` (verify) reads every segment
file whole against the CRC32 in its footer.

This module is on the search path: it imports tantivy and the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache

import tantivy

from mailvault._fs import fsync_dir
from mailvault._text import shown, undecodable
from mailvault.errors import (
    IndexDamaged,
    IndexOutdated,
    IndexUnavailable,
    MailvaultError,
    SearchError,
)

# Neither `typing` nor `pathlib` is imported at run time: they are a few ms of every `mailvault
# search` start-up.  Writers pass Path objects; the search path (open_for_search and what it
# calls) uses os.path, so it takes any path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from mailvault.parse.model import ParsedMessage

INDEX_FORMAT = "mailvault-index"
SCHEMA_VERSION = 3  # 2: keyword fields (ids, accounts, addresses) NFC-normalised;
# 3: the body indexed unstored, its first PREVIEW_CHARS stored apart (body_preview)
MARKER = "mailvault-index.json"

TEXT = "mv_text"  # the case- and accent-folding analyzer for prose
LOWER = "mv_lower"  # one lower-cased token per value (exact address match)
RAW = "raw"  # tantivy's built-in: one token, unchanged

# Han, Hiragana, Katakana (and their extensions, half-width kana): one character per token.
CJK = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0002fa1f"
)
JOINER = "\u2060"  # WORD JOINER: invisible, not alphanumeric, so a token boundary
MAX_TOKEN_BYTES = 64

# Writer memory: tantivy flushes a segment when this budget is used; bounded RSS.
WRITER_HEAP = 96_000_000
WRITER_THREADS = 1

ADDRESS_FIELDS = ("from", "to", "cc", "bcc")

# Tantivy stores dates as nanoseconds in an i64 (1677-09-21 to 2262-04-11); a Date header
# outside these bounds (a forged or garbled year: 3609 in real mail) is indexed at the nearest
# bound, so it sorts and ranges on the right side of every real date (`date:<2000` does not
# find a message dated 3609).  `show` gives the header as written.  The query side clamps a
# range beyond a bound alike (``search.query._date_range``), so `date:<1600` finds them.
UNKNOWN_DATE = datetime(1970, 1, 1, tzinfo=UTC)
DATE_MIN = datetime(1678, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(2262, 1, 1, tzinfo=UTC)

# Fields an unfielded word searches, with their score boosts.
DEFAULT_FIELDS = ("subject", "body", "from", "to", "cc", "bcc", "attachment", "attachment_text")
FIELD_BOOSTS = {"subject": 2.0, "from": 1.5}

# Stored fields, everything `mailvault search` prints without a catalog lookup.
STORED_FIELDS = ("id", "message_id", "date", "from", "to", "subject", "size", "body_preview")
# The body text kept for snippets, in a stored field of its own; the body field itself (up to
# indexer.INDEX_BODY_BYTES) is indexed but not stored.  Tantivy's document store keeps the
# last 100 blocks it read per segment, decompressed, and a document bigger than a block is a
# block of its own: with whole bodies stored, 200 hits on 2 MB bodies took `search` 700 MB,
# and a merge of segments holding them as much.
PREVIEW_CHARS = 32 * 1024


def build_schema() -> tantivy.Schema:
    """The index schema.  Changing it, or what ``normalize``/the analyzers do to text, means
    bumping SCHEMA_VERSION: old indexes then ask for `mailvault reindex`."""
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name=RAW, index_option="basic")
    sb.add_text_field("message_id", stored=True, tokenizer_name=RAW, index_option="basic")
    for name in ADDRESS_FIELDS:
        # Stored as written ("Name <addr>") for display; from, to are printed by search.
        sb.add_text_field(name, stored=name in ("from", "to"), tokenizer_name=TEXT)
        sb.add_text_field(f"{name}_addr", stored=False, tokenizer_name=LOWER, index_option="basic")
    sb.add_text_field("subject", stored=True, tokenizer_name=TEXT)
    sb.add_text_field("body", stored=False, tokenizer_name=TEXT)
    sb.add_bytes_field("body_preview", stored=True, indexed=False)  # UTF-8: stored, not indexed
    sb.add_text_field("attachment", stored=False, tokenizer_name=TEXT)
    sb.add_text_field("attachment_text", stored=False, tokenizer_name=TEXT)
    sb.add_date_field("date", stored=True, indexed=True, fast=True)
    sb.add_unsigned_field("size", stored=True, indexed=True, fast=True)
    sb.add_boolean_field("has_attachment", stored=False, indexed=True)
    sb.add_boolean_field("unreadable", stored=False, indexed=True)
    sb.add_text_field("account", stored=False, tokenizer_name=RAW, index_option="basic")
    sb.add_text_field("list_id", stored=False, tokenizer_name=TEXT)
    sb.add_text_field("thread", stored=False, tokenizer_name=RAW, index_option="basic")
    return sb.build()


def text_analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .build()
    )


def lower_analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw())
        .filter(tantivy.Filter.lowercase())
        .build()
    )


def _register(index: tantivy.Index) -> tantivy.Index:
    """Custom analyzers are not persisted by tantivy: register them on every open."""
    index.register_tokenizer(TEXT, text_analyzer())
    index.register_tokenizer(LOWER, lower_analyzer())
    return index


def preview(doc: tantivy.Document) -> str:
    """The stored start of a document's body (``PREVIEW_CHARS``), as indexed."""
    value = doc.get_first("body_preview")
    return bytes(value).decode("utf-8", "replace") if value else ""


def normalize(text: str) -> str:
    """Text as indexed (and queried): NFC (so ``e`` + combining acute folds like ``é``), and a
    WORD JOINER between adjacent CJK characters (see the module docstring).  A NUL stays: not
    alphanumeric, it parts words as a space does (dropping it merged ``nul\\0in`` into one
    word ``nulin``), and the stored text stays what ``show`` gives."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFC", text).replace(JOINER, "")
    if max(text, default="\x00") < CJK[0]:  # no character at or above U+3040: no CJK run
        return text
    return _cjk_run().sub(_join_run, text)


def exact(text: str) -> str:
    """A keyword value (Message-ID, thread, account, address) as indexed and queried: NFC with
    no NULs and no word joiners, so that a value typed composed or decomposed, or with CJK
    characters (which :func:`normalize` would split), matches the one token it is indexed as.
    (A NUL, which no command line can carry, is dropped: the value stays one token.)"""
    if text.isascii():
        return text.replace("\x00", "")
    return unicodedata.normalize("NFC", text.replace(JOINER, "")).replace("\x00", "")


@cache
def _cjk_run() -> re.Pattern[str]:
    """Compiled on first use: ~2 ms that an ASCII-only search would pay at every start-up."""
    return re.compile(f"[{CJK}]{{2,}}")


def _join_run(match: re.Match[str]) -> str:
    return JOINER.join(match.group())


def display(text: str) -> str:
    """Stored text as it was written (the joiners :func:`normalize` added removed)."""
    return text.replace(JOINER, "") if JOINER in text else text


# -- layout ------------------------------------------------------------------------------------


NEW_SUFFIX = ".new"  # index.new: a rebuild in progress, or a swap a crash interrupted
OLD_SUFFIX = ".old"  # index.old: the index a swap is replacing


def holds_deleted_documents(index_dir: Path) -> bool:
    """Whether a segment still carries deleted documents: Tantivy only marks a deletion, and
    the document's text stays in the segment's files until a merge rewrites it."""
    try:
        meta = json.loads((index_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(
        (segment.get("deletes") or {}).get("num_deleted_docs", 0)
        for segment in meta.get("segments", [])
    )


def new_path(index_dir: Path) -> Path:
    return index_dir.with_name(index_dir.name + NEW_SUFFIX)


def old_path(index_dir: Path) -> Path:
    return index_dir.with_name(index_dir.name + OLD_SUFFIX)


def read_marker(index_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(os.path.join(index_dir, MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != INDEX_FORMAT:
        return None
    return marker


def is_complete(index_dir: str | os.PathLike[str]) -> bool:
    """A directory with our marker (written last) and tantivy's meta.json."""
    return read_marker(index_dir) is not None and os.path.exists(
        os.path.join(index_dir, "meta.json")
    )


def write_marker(index_dir: Path, **extra: Any) -> None:
    marker = {
        "format": INDEX_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        **extra,
    }
    tmp = index_dir / (MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(marker, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, index_dir / MARKER)
    fsync_dir(index_dir)


def recover(index_dir: Path, *, writer: bool = True) -> None:
    """Finish or undo an interrupted ``reindex`` swap.  ``writer``: we hold the vault lock.

    a file (not a directory) at any of the three -> remove it (derived data in the index's place)
    index missing, index.new complete   -> rename index.new to index (the swap's second step)
    index present, index.old present    -> remove index.old (the swap's third step)
    index.new, index present            -> remove index.new (a build that died before the swap)
    """
    new, old = new_path(index_dir), old_path(index_dir)
    if writer:
        for place in (index_dir, new, old):
            _remove_non_directory(place)
    live = index_dir.is_dir() and (index_dir / "meta.json").exists()
    if not live and new.exists() and is_complete(new):
        if index_dir.exists():
            _discard(index_dir)  # an empty placeholder (init_vault makes index/)
        os.rename(new, index_dir)
        fsync_dir(index_dir.parent)
        live = True
    if not writer:
        return
    if live and old.exists():
        _discard(old, ignore_errors=True)
    if new.exists() and (live or not is_complete(new)):
        # Incomplete, or complete but never swapped in: the live index still matches the
        # catalog's indexed_at, so the rebuild is simply dropped.
        _discard(new, ignore_errors=True)


def _remove_non_directory(place: Path) -> None:
    """A file (or a dangling link) where an index directory belongs: `index/` replaced by a
    file, say.  Every later step would fail on it (rename, rmtree, tantivy), and what is there
    is at most derived data: it goes, with a warning, and the index is built again."""
    if not os.path.lexists(place) or place.is_dir():
        return
    import logging

    logging.getLogger(__name__).warning(
        "%s is not a directory; removing it (the index is derived data and is rebuilt)", place
    )
    place.unlink()
    fsync_dir(place.parent)


def _discard(path: Path, *, ignore_errors: bool = False) -> None:
    """Remove an index directory, or whatever non-directory took its place."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    elif ignore_errors:
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        path.unlink()


def swap_in(index_dir: Path) -> None:
    """Make the complete ``index.new`` the live index, atomically as seen by readers."""
    new, old = new_path(index_dir), old_path(index_dir)
    if not is_complete(new):
        raise SearchError(f"{new} is not a complete index; not swapping it in")
    if os.path.lexists(old):
        _discard(old)
    if os.path.lexists(index_dir):
        os.rename(index_dir, old)
    os.rename(new, index_dir)
    fsync_dir(index_dir.parent)
    _discard(old, ignore_errors=True)


# -- opening -----------------------------------------------------------------------------------


def _check_marker(index_dir: str | os.PathLike[str]) -> None:
    marker = read_marker(index_dir)
    if marker is None:
        raise SearchError(
            f"{index_dir} is not a mailvault index (no {MARKER}); rebuild it with "
            "`mailvault reindex`"
        )
    if marker.get("schema_version") != SCHEMA_VERSION:
        raise IndexOutdated(
            f"the index at {index_dir} has schema version {marker.get('schema_version')}, "
            f"this mailvault uses {SCHEMA_VERSION}; rebuild it with `mailvault reindex`"
        )


def live_path(index_dir: str | os.PathLike[str]) -> str | None:
    """The directory a reader opens: ``index``, or a complete ``index.new`` when a crash fell
    between the two renames of a swap; None when there is neither."""
    live = os.fspath(index_dir)
    if os.path.exists(os.path.join(live, "meta.json")):
        return live
    new = live + NEW_SUFFIX
    if os.path.exists(os.path.join(new, "meta.json")) and is_complete(new):
        return new
    return None


def open_for_search(index_dir: str | os.PathLike[str]) -> tantivy.Index:
    """Open the live index read-only (no lock; tolerates a swap in progress)."""
    path = live_path(index_dir)
    if path is None:
        if os.path.lexists(index_dir) and not os.path.isdir(index_dir):
            raise damaged(index_dir, "it is not a directory (replaced by a file?)")
        raise SearchError(
            f"no search index at {index_dir}; build it with `mailvault index` "
            "(the vault may also simply be empty)"
        )
    _check_marker(path)
    with reading(path):
        return _register(tantivy.Index.open(path))


def create_or_open(index_dir: Path, *, marker: bool = True) -> tuple[tantivy.Index, bool]:
    """Open the index for writing, creating it if absent; returns (index, created).

    ``marker=False`` creates without the marker, for a rebuild in ``index.new`` that is not
    complete until :func:`write_marker` says so.
    """
    import shutil

    _remove_non_directory(index_dir)
    if undecodable(os.fspath(index_dir)):  # Tantivy takes a path as UTF-8 text only
        raise IndexUnavailable(
            f"cannot use an index at {shown(os.fspath(index_dir))}: the vault's path is not "
            "UTF-8 (a name in another encoding), which the search index cannot open; move or "
            "rename the vault to a UTF-8 path, then run `mailvault index`"
        )
    created = not (index_dir / "meta.json").exists()
    if created:
        if index_dir.exists():
            for leftover in index_dir.iterdir():  # a half-created index: start clean
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
        index_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    elif marker:
        _check_marker(index_dir)
    if created:
        try:
            index = _register(tantivy.Index(build_schema(), path=str(index_dir), reuse=False))
        except ValueError as exc:
            raise SearchError(
                f"cannot create the index at {index_dir}: {exc}; check the free space and the "
                "permissions there, then run `mailvault index`"
            ) from None
    else:
        with reading(index_dir):
            index = _register(tantivy.Index.open(str(index_dir)))
    if created:
        # An empty commit makes meta.json durable before the marker says "this is an index".
        writer = index.writer(15_000_000, 1)
        writer.commit()
        writer.wait_merging_threads()
        if marker:
            write_marker(index_dir)
    return index, created


# -- damage ------------------------------------------------------------------------------------

# How tantivy says it could not read its files (its IoError, DataCorruption and OpenReadError
# errors, which tantivy-py raises as ValueError); a query it cannot run says something else.
_UNREADABLE = ("An IO error occurred", "Data corrupted", "Failed to open file for read")
FOOTER_MAGIC = 1337  # the last 4 bytes of every tantivy file (after the footer and its length)


def is_panic(exc: BaseException) -> bool:
    """A Rust panic inside tantivy: pyo3 raises it as ``PanicException``, a BaseException that
    ``except Exception`` misses.  A damaged term dictionary gives one instead of an error."""
    return type(exc).__name__ == "PanicException"


def is_damage(exc: BaseException) -> bool:
    """Whether an exception from tantivy says the index's files could not be read."""
    return is_panic(exc) or (isinstance(exc, ValueError) and str(exc).startswith(_UNREADABLE))


def damaged(index_dir: str | os.PathLike[str], cause: BaseException | str) -> IndexDamaged:
    """The one-line error for an index that cannot be read: the rebuild is always the fix."""
    if not isinstance(cause, str):
        text = " ".join(str(cause).split()) or type(cause).__name__
        cause = f"tantivy failed reading it ({text})" if is_panic(cause) else text
    return IndexDamaged(
        f"the search index at {os.fspath(index_dir)} is damaged: {cause}; run `mailvault reindex`"
    )


# how Rust spells an OS error in tantivy's messages: "Os { code: 30, ... }", "(os error 30)"
_OS_ERROR = re.compile(r"(?:\bos error |\bOs \{ code: )(\d+)")


def unavailable(index_dir: str | os.PathLike[str], cause: BaseException) -> IndexUnavailable | None:
    """The error for an index that tantivy could not open for want of write access (it takes a
    lock file in the index directory even to read), or None: then it is damage."""
    text = " ".join(str(cause).split())
    number = _OS_ERROR.search(text)
    if isinstance(cause, OSError):
        code = cause.errno
    elif number is not None:
        code = int(number.group(1))
    elif "Read-only file system" in text:
        code = errno.EROFS
    else:
        code = errno.EACCES if "Permission denied" in text else None
    where = f"the search index at {os.fspath(index_dir)} cannot be opened"
    if code == errno.EROFS:
        return IndexUnavailable(
            f"{where}: the filesystem is read-only, and the index takes a lock file even to "
            "be read (and every search records an audit entry); mount the vault read-write, or "
            "search a copy of it (`cp -a VAULT COPY`)"
        )
    if code == errno.EACCES:
        return IndexUnavailable(
            f"{where}: permission denied ({text}); run mailvault as the vault's owner "
            "(`mailvault verify` lists files with other owners or modes)"
        )
    return None


@contextlib.contextmanager
def reading(index_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Tantivy failing to read the index, in the body, as :class:`IndexDamaged`.

    For calls that only read: once the index is open, a read fails only when a file is
    damaged (tantivy checks no checksum as it reads, so a flipped byte surfaces as an IO error,
    garbage, or a panic), whatever tantivy-py raises for it."""
    try:
        yield
    except MailvaultError:
        raise
    except (ValueError, OSError) as exc:
        raise unavailable(index_dir, exc) or damaged(index_dir, exc) from None
    except BaseException as exc:
        if not is_panic(exc):
            raise
        raise damaged(index_dir, exc) from None


def live_files(index_dir: str | os.PathLike[str]) -> list[str]:
    """The files the committed index is made of: for each segment meta.json lists, its
    ``<id>.<component>`` files and its current ``<id>.<opstamp>.del``; not the files of
    segments a writer is making or has merged away."""
    directory = os.fspath(index_dir)
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    wanted: set[str] = set()
    prefixes: set[str] = set()
    for segment in meta.get("segments", []):
        stem = str(segment["segment_id"]).replace("-", "")
        prefixes.add(stem)
        deletes = segment.get("deletes") or {}
        if "opstamp" in deletes:
            wanted.add(f"{stem}.{deletes['opstamp']}.del")
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name in wanted or (name.count(".") == 1 and name.split(".")[0] in prefixes)
    )


def file_problem(path: str) -> str | None:
    """What is wrong with one segment file, or None.

    Tantivy ends every file with a footer holding the CRC32 of all that comes before it (JSON
    ``{"version", "crc"}``, its u32 length, ``FOOTER_MAGIC``), but checks it only in a call
    tantivy-py does not expose; reading the whole file is the one way to find damage in its
    middle before a search trips on it.  Raises FileNotFoundError for a file that is gone."""
    import struct
    import zlib

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                return f"{path} is cut short ({size} bytes)"
            fh.seek(size - 8)
            length, magic = struct.unpack("<II", fh.read(8))
            if magic != FOOTER_MAGIC or length + 8 > size:
                return f"{path} has no tantivy footer (cut short or overwritten)"
            fh.seek(size - 8 - length)
            expected = int(json.loads(fh.read(length))["crc"])
            fh.seek(0)
            crc, left = 0, size - 8 - length
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    return f"{path} was cut short while it was read"
                crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    except FileNotFoundError:
        raise
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    except (ValueError, KeyError, TypeError):
        return f"{path} has a damaged footer"
    return None if crc == expected else f"{path} does not match its checksum (its content changed)"


def check_files(index_dir: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """(path, problem) for each damaged file of the committed index: every byte of every
    live segment file is read once.  A file that vanishes while it is read was merged away
    by a writer committing meanwhile (no longer listed): not a problem."""
    for path in live_files(index_dir):
        try:
            problem = file_problem(path)
        except FileNotFoundError:
            if path not in live_files(index_dir):
                continue
            problem = f"{path} is missing"
        if problem is not None:
            yield path, problem


# -- documents ---------------------------------------------------------------------------------


def make_document(msg: ParsedMessage, accounts: Iterable[str] = ()) -> tantivy.Document:
    """The index document of one parsed message."""
    doc = tantivy.Document()
    doc.add_text("id", msg.sha256)
    doc.add_text("message_id", exact(msg.message_id))
    for name, addrs in (("from", msg.from_), ("to", msg.to), ("cc", msg.cc), ("bcc", msg.bcc)):
        for addr in addrs:
            doc.add_text(name, normalize(addr.mailbox()))  # "Name" <addr>, quoted
            if addr.addr:
                doc.add_text(f"{name}_addr", exact(addr.addr))
    doc.add_text("subject", normalize(msg.subject))
    body = normalize(msg.body_text)
    doc.add_text("body", body)
    doc.add_bytes("body_preview", body[:PREVIEW_CHARS].encode("utf-8", "replace"))
    for att in msg.attachments:
        if att.filename:
            doc.add_text("attachment", normalize(att.filename))
        if att.text:
            doc.add_text("attachment_text", normalize(att.text))
    date = msg.date
    if date is None:
        date = UNKNOWN_DATE
    elif not DATE_MIN <= date <= DATE_MAX:
        date = DATE_MIN if date < DATE_MIN else DATE_MAX
    doc.add_date("date", date.astimezone(UTC))
    doc.add_unsigned("size", max(int(msg.size), 0))
    doc.add_boolean("has_attachment", bool(msg.attachments))
    doc.add_boolean("unreadable", bool(msg.unreadable))
    for account in accounts:
        doc.add_text("account", exact(account))
    if msg.list_id:
        doc.add_text("list_id", normalize(msg.list_id))
    if msg.thread_id:
        doc.add_text("thread", exact(msg.thread_id))
    return doc


# Ids per delete of ``IndexWriter.delete_many``
DELETE_BATCH = 1024


class IndexWriter:
    """Batched writes: ``put`` many, ``commit`` once; one document per sha256, ever."""

    def __init__(self, index: tantivy.Index, *, heap: int = WRITER_HEAP) -> None:
        self.index = index
        self.writer = index.writer(heap, WRITER_THREADS)
        self.pending = 0

    def put(self, msg: ParsedMessage, accounts: Sequence[str] = ()) -> None:
        self.writer.delete_documents_by_term("id", msg.sha256)
        self.writer.add_document(make_document(msg, accounts))
        self.pending += 1

    def delete(self, sha256: str) -> None:
        self.writer.delete_documents_by_term("id", sha256)
        self.pending += 1

    def delete_many(self, sha256s: Iterable[str]) -> None:
        """``delete`` each, a term set query per ``DELETE_BATCH`` ids: tantivy holds every
        delete until the commit, about 1.2 KB for a term deleted alone (100,000: 124 MB),
        and a few bytes an id in a set."""
        batches = iter(sha256s)
        while batch := list(itertools.islice(batches, DELETE_BATCH)):
            query = tantivy.Query.term_set_query(self.index.schema, "id", batch)
            self.writer.delete_documents_by_query(query)
            self.pending += len(batch)

    def delete_without_id(self) -> None:
        """Delete every document that has no ``id`` (none of mailvault's: a damaged index, or
        documents another tool wrote into it), which no delete by id reaches."""
        schema = self.index.schema
        with_id = tantivy.Query.regex_query(schema, "id", ".*")
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Must, tantivy.Query.all_query()), (tantivy.Occur.MustNot, with_id)]
        )
        self.writer.delete_documents_by_query(query)
        self.pending += 1

    def commit(self) -> None:
        """Durable when this returns (tantivy fsyncs the segment files and meta.json)."""
        self.writer.commit()
        self.pending = 0

    def close(self) -> None:
        """Commit and wait for background merges, so the next search sees few segments."""
        with contextlib.suppress(ValueError):
            if self.pending:
                self.writer.commit()
            self.writer.wait_merging_threads()


# Ids per run of ``live_ids``' walk of the id term dictionary (about: the runs are cut by the
# leading hex digits of the sha256, which spread evenly).
ID_RUN = 8192
_HEX = "0123456789abcdef"


def id_prefixes(total: int, per_run: int) -> Iterator[str]:
    """Leading hex digits, in order, that cut ``total`` random sha256 ids into runs of about
    ``per_run``."""
    digits = math.ceil(math.log(total / per_run, 16)) if total > per_run else 0
    for chars in itertools.product(_HEX, repeat=digits):
        yield "".join(chars)


def live_ids(searcher: tantivy.Searcher, schema: tantivy.Schema) -> Iterator[tuple[str, int]]:
    """Each id a live (not deleted) document holds, with how many hold it, in byte order (as
    SQLite's ``ORDER BY`` gives a TEXT column), for a walk side by side with the catalog.

    The id term dictionary is read in runs of about ``ID_RUN`` ids, cut by their leading hex
    digits, so memory does not grow with the index; each run is sorted here (tantivy returns
    it by count).  Cutting by hex digits misses an id that is no lower-case sha256, so an
    index holding one (damaged, or not written by mailvault) is read in one run instead.
    """
    every = tantivy.Query.all_query()
    total = searcher.num_docs
    sha256s = tantivy.Query.regex_query(schema, "id", "[0-9a-f]{64}")
    hex_only = int(getattr(searcher.search(sha256s, 1, count=True), "count", 0) or 0) == total
    for prefix in id_prefixes(total, ID_RUN) if hex_only else [""]:
        terms = searcher.terms_with_prefix("id", prefix, filter_query=every)
        yield from sorted((term, n) for term, n in terms if n)


def contains(searcher: tantivy.Searcher, schema: tantivy.Schema, sha256: str) -> bool:
    """Whether a live (not deleted) document has this id; doc_freq would count deleted ones."""
    query = tantivy.Query.term_query(schema, "id", sha256)
    return bool(getattr(searcher.search(query, 1), "count", 0))
