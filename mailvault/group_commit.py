"""Group commit for fetch, on a thread of its own: the socket keeps streaming while a batch of
downloaded messages is made durable and recorded.

A batch costs at most two ``syncfs`` calls and one catalog transaction; batches that queue up
behind a slow disk are committed together.  For every message the order stays: data durable,
name, name durable, catalog row; the DELEs follow only once the batch comes back finished.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mailvault.session import ListedMessage
from mailvault.store import BlobStore, StagedBlob

Batch = list[tuple[ListedMessage, StagedBlob]]  # staged messages for one group commit
Results = list[tuple[bool, int | None]]  # per message: (content was new, UIDL row id)


@dataclass(slots=True)
class Finished:
    """A committed batch and what the catalog said about each of its messages."""

    batch: Batch
    results: Results


class GroupCommitter:
    """Group commits on a thread of their own, so the download does not wait for the disk.

    The socket thread stages a batch (its files are completely written and closed) and hands
    it over with ``put``; this thread makes it durable and records it, and hands it back in
    ``finished``.  Only then does the socket thread queue the batch's DELEs, so "DELE only
    after commit" holds exactly as with a synchronous commit.  The staging itself stays on
    the socket thread: a second thread doing it waited for the GIL after every hash, compress
    and file call while the socket thread parsed, and measured no faster for more memory.

    Batches that queue up while a commit runs are committed together (one ``syncfs`` pair and
    one SQLite fsync for all), and the ``syncfs`` that makes one commit's names durable also
    covers the data of the batches queued at that moment, so their commit skips its first
    ``syncfs``.  For every message the order stays: data durable, name, name durable, catalog
    row.  At most ``max_waiting`` batches wait; ``put`` blocks beyond that.
    """

    def __init__(
        self, store: BlobStore, record: Callable[[Batch], Results], *, max_waiting: int = 4
    ) -> None:
        self._store = store
        self._record = record
        self._max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[Batch] = deque()
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._presynced: list[Batch] = []  # waiting batches whose data the last syncfs covered
        self.finished: deque[Finished] = deque()
        self._thread = threading.Thread(target=self._run, name="mailvault-commit", daemon=True)
        self._thread.start()

    # -- the socket thread's side ---------------------------------------------------------------
    def put(self, batch: Batch) -> None:
        """Queue a staged batch for commit; raise if an earlier commit failed."""
        with self._cond:
            while len(self._waiting) >= self._max_waiting and self._error is None:
                self._cond.wait()
            self._raise()
            self._waiting.append(batch)
            self._cond.notify_all()

    def wait_finished(self) -> None:
        """Block until a commit finishes or none is left to run; raise a commit's failure."""
        with self._cond:
            while not self.finished and (self._waiting or self._busy) and self._error is None:
                self._cond.wait()
            self._raise()

    def raise_error(self) -> None:
        with self._cond:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Commit what is queued (unless a commit failed) and stop.  The staged files no commit
        took are the caller's to remove (``BlobStore.remove_own_tmp``)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._waiting = deque()

    # -- the commit thread ----------------------------------------------------------------------
    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._waiting and not self._closing:
                    cond.wait()
                if not self._waiting:
                    return
                batches = list(self._waiting)
                self._waiting.clear()
                self._busy = True
                cond.notify_all()
            try:
                results = self._commit(batches)
            except BaseException as exc:  # handed to the socket thread, which raises it
                with cond:
                    self._error, self._busy = exc, False
                    cond.notify_all()
                return
            with cond:
                start = 0
                for batch in batches:
                    self.finished.append(Finished(batch, results[start : start + len(batch)]))
                    start += len(batch)
                self._busy = False
                cond.notify_all()

    def _commit(self, batches: list[Batch]) -> Results:
        """syncfs (data), link, syncfs (names), one catalog transaction."""
        store = self._store
        if not all(any(b is p for p in self._presynced) for b in batches):
            store.sync()
        store.link([staged for batch in batches for _, staged in batch])
        with self._cond:  # queued, so completely written: the next syncfs covers their data
            self._presynced = list(self._waiting)  # references: no id can be reused
        store.sync()
        return self._record([item for batch in batches for item in batch])
