"""Text of a PDF attachment, with caps so one hostile PDF cannot stall or bloat a parse.

pypdf is pure Python (no native code to crash the worker) and maintained.  Caps: input size,
page count, output characters and wall time.  Time is checked between pages and, where the
caller runs on the main thread with no SIGALRM handler of its own (a process-pool worker), a
timer also interrupts a single runaway page.  Anything that goes wrong yields the text so far.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator

MAX_PDF_BYTES = 20 * 1024 * 1024
MAX_PAGES = 50
MAX_CHARS = 100_000
MAX_SECONDS = 10.0


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


def pdf_text(data: bytes, *, max_seconds: float = MAX_SECONDS) -> str:
    """Extracted text of the first pages of a PDF; "" when it has none or cannot be read."""
    if len(data) > MAX_PDF_BYTES:
        return ""
    chunks: list[str] = []
    total = 0
    deadline = time.monotonic() + max_seconds
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    try:
        with _alarm(max_seconds), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(data), strict=False)
            for number, page in enumerate(reader.pages):
                if number >= MAX_PAGES or total >= MAX_CHARS or time.monotonic() > deadline:
                    break
                text = page.extract_text() or ""
                chunks.append(text)
                total += len(text)
    except (_Timeout, Exception, RecursionError):
        pass
    return "\n".join(chunks)[:MAX_CHARS]
