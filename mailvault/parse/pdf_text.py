"""Text of a PDF attachment, with caps so one hostile PDF cannot stall or bloat a parse.

pypdf is pure Python (no native code to crash the worker) and maintained.  Caps: input size,
page count, output characters and wall time, and per stream the bytes it may inflate to and the
tokens parsed from it (a 175 KB PDF inflating to 70 MB of content took 293 MB to parse, and
gave no text).  Time is checked between pages and, where the caller runs on the main thread
with no SIGALRM handler of its own (a process-pool worker), a timer also interrupts a single
runaway page.  Anything that goes wrong yields the text so far; a cap that cost text is named
in the result, for the message's defects.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_PDF_BYTES = 20 * 1024 * 1024
MAX_PAGES = 50
MAX_CHARS = 100_000
MAX_SECONDS = 10.0
MAX_STREAM_BYTES = 16 * 1024 * 1024  # what one stream may inflate to (pypdf's default: 75 MB)
MAX_STREAM_TOKENS = 500_000  # operands and operators parsed from one content stream (2 M)
MAX_CACHED_BYTES = 32 * 1024 * 1024  # inflated streams held before the file is opened anew


@dataclass(frozen=True)
class PdfText:
    text: str
    limit: str = ""  # the cap that stopped extraction (text missing or cut short), else ""


class _Timeout(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` when that can be done without side effects."""
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        yield
        return
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def pdf_text(data: bytes, *, max_seconds: float = MAX_SECONDS) -> PdfText:
    """Extracted text of the first pages of a PDF; "" when it has none or cannot be read."""
    if len(data) > MAX_PDF_BYTES:
        return PdfText("", f"the PDF is over {MAX_PDF_BYTES // 2**20} MiB")
    chunks: list[str] = []
    total = 0
    deadline = time.monotonic() + max_seconds
    limit = ""
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    try:
        with _alarm(max_seconds), warnings.catch_warnings(), _stream_caps():
            warnings.simplefilter("ignore")
            for text in _page_texts(data, deadline):
                chunks.append(text)
                total += len(text)
                if total >= MAX_CHARS:
                    break
    except _Timeout:
        limit = f"text extraction took over {max_seconds:g} s"
    except Exception as exc:  # a broken PDF (RecursionError too): no word, it has no more
        limit = _cap_reached(exc)
    return PdfText("\n".join(chunks)[:MAX_CHARS], limit)


def _page_texts(data: bytes, deadline: float) -> Iterator[str]:
    """The text of each of the first ``MAX_PAGES`` pages, until ``deadline``.  pypdf keeps
    every stream it inflated, so 50 pages of 16 MiB each would be held at once: past
    ``MAX_CACHED_BYTES`` the file is opened anew, and what earlier pages inflated is let go."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=False)
    cached = 0
    for number in range(min(len(reader.pages), MAX_PAGES)):
        if cached > MAX_CACHED_BYTES:
            del reader
            gc.collect()  # a reader and its pages refer to each other: only gc frees them
            reader, cached = PdfReader(io.BytesIO(data), strict=False), 0
        if time.monotonic() > deadline:
            raise _Timeout
        page = reader.pages[number]
        text = page.extract_text() or ""
        cached += _inflated(page)
        del page  # no reference to the old reader is left when it is let go
        yield text


def _inflated(page: Any) -> int:
    """Bytes the page's content streams and form XObjects inflated to (as pypdf caches them)."""
    from pypdf.generic import StreamObject

    found: list[Any] = []
    contents = page.get("/Contents")
    contents = contents.get_object() if contents is not None else None
    found.extend(contents if isinstance(contents, list) else [contents])
    resources = page.get("/Resources")
    resources = resources.get_object() if resources is not None else None
    xobjects = resources.get("/XObject") if isinstance(resources, dict) else None
    xobjects = xobjects.get_object() if xobjects is not None else None
    if isinstance(xobjects, dict):  # forms only: an image is not inflated for its text
        forms = [x for x in map(_resolved, xobjects.values()) if isinstance(x, dict)]
        found.extend(x for x in forms if x.get("/Subtype") == "/Form")
    streams = [_resolved(item) for item in found]
    return sum(len(s.get_data()) for s in streams if isinstance(s, StreamObject))


def _resolved(item: Any) -> Any:
    return item.get_object() if item is not None else None


_CAPS = {
    "zlib_maximum_output_length": MAX_STREAM_BYTES,
    "lzw_maximum_output_length": MAX_STREAM_BYTES,
    "run_length_maximum_output_length": MAX_STREAM_BYTES,
    "brotli_maximum_output_length": MAX_STREAM_BYTES,
    "array_based_stream_maximum_output_length": MAX_STREAM_BYTES,
    "stream_decoding_work_maximum_length": MAX_STREAM_BYTES,
    "stream_parsing_work_maximum_count": MAX_STREAM_TOKENS,
}


def _stream_caps() -> contextlib.AbstractContextManager[Any]:
    """pypdf's limits on inflating and parsing one stream, lowered for the duration (those
    this pypdf has: its ``Configuration`` gained fields over releases)."""
    import dataclasses

    import pypdf

    apply = getattr(pypdf, "apply_configuration", None)
    if apply is None:
        return contextlib.nullcontext()
    known = {field.name for field in dataclasses.fields(pypdf.Configuration)}
    caps: contextlib.AbstractContextManager[Any] = apply(
        None, **{name: cap for name, cap in _CAPS.items() if name in known}
    )
    return caps


def _cap_reached(exc: Exception) -> str:
    """Which stream cap ``exc`` says was reached, or "" for any other failure."""
    from pypdf.errors import LimitReachedError

    if not isinstance(exc, LimitReachedError):
        return ""
    if "decompress" in str(exc).lower():
        return f"a stream of it inflates beyond {MAX_STREAM_BYTES // 2**20} MiB"
    return f"a stream of it holds over {MAX_STREAM_TOKENS:,} tokens"
