"""The pump loop of a fetch session: the pipelined RETR/TOP/DELE window, received messages
streamed into the store, and group commits handed to their own thread.

It is split from :mod:`mailvault.fetch` along the line between deciding and doing.  The
fetcher decides, once per session, from the listing and the catalog: which messages are new,
which committed ones are due for deletion (after ``TOP`` shows their header), which are
suspects to download again, and what to do when a session breaks.  This loop is what then
happens on one connection, event by event, and it keeps the order that is the product's
central promise for every message:

    RETR -> blob in tmp/ -> (batch) data synced, renamed, synced -> catalog row committed
         -> DELE (only if the account's policy says so)

It works for the fetcher (:class:`~mailvault.fetch.AccountFetcher`): the fetcher's report,
progress, catalog and store are the ones it updates, and the policy questions (is a message
due for deletion, is this the committed header) are answered by the fetcher.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mailvault import pop3
from mailvault.catalog import Committed, LiveUidl
from mailvault.errors import MailvaultError, OverlongLine, ProtocolError, Stalled
from mailvault.group_commit import Batch, GroupCommitter, Results
from mailvault.session import PIPELINE_WINDOW, ListedMessage, Pop3Session
from mailvault.store import BlobWriter, StagedBlob

if TYPE_CHECKING:  # the fetcher creates the loop; only its type is needed here
    from mailvault.fetch import AccountFetcher

TOP_LIMIT = 256 * 1024  # bytes of a TOP answer kept: more than any real header block


@dataclass
class Check:
    """A committed message due for deletion, whose header TOP is to show first."""

    msg: ListedMessage
    row: LiveUidl
    # a message just downloaded (``_delete_new``), not a committed one found again
    downloaded: bool = False


class Unfetchable(ProtocolError):
    """One message cannot be received (a line over the bound); the session is broken."""

    def __init__(self, message: ListedMessage, text: str) -> None:
        super().__init__(text)
        self.message = message


RETR_SLACK = 16 * 1024 * 1024
# A bare-LF terminator followed by the next pipelined command's status line, inside what the
# client takes for message data: a server ending lines with LF, whose answers run together.
_NEXT_ANSWER_AFTER_LF_DOT = (b"\n.\n+OK", b"\n.\n-ERR")


def _size_as_listed(msg: ListedMessage, size: int) -> bool:
    """RETR gave what LIST announced (+2: the CRLF Dovecot adds to mail stored without a
    final line break, which its LIST does not count)."""
    return size in (msg.size, msg.size + 2)


def kept_for_size(label: str, stored: int, listed: int) -> str:
    """Why a message is left on the server: its size is not LIST's."""
    return (
        f"{label}: RETR gave {stored:,} octets where LIST says {listed:,}: stored as delivered "
        "and left on the server (only a message of LIST's size is deleted: a RETR cut short "
        "keeps its header; Exchange gives exact sizes with Set-PopSettings "
        "-EnableExactRFC822Size $true)"
    )


def doubtful_first_dot(label: str) -> str:
    """A message that may have lost the dot of a first line starting "..": Dovecot 2.3 sends
    a message's first line unstuffed, so "..x" arrives as a stuffed ".x" would, one octet
    under LIST's size; a server that stuffs, with a LIST one octet off, looks the same.  It
    is stored as delivered and never deleted, so the original stays on the server."""
    return (
        f"{label}: its first line starts with '.' and RETR gave one octet off what LIST said: "
        "a server that does not dot-stuff a first line (Dovecot 2.3) may have cost it a dot; "
        "stored as delivered, and left on the server (keep or fetch it by other means)"
    )


def retr_bound(size: int) -> int:
    """How long a RETR answer (and a line in it) may run for a message LIST gave ``size``.

    Longer than LIST says, for servers whose sizes are approximate (Exchange) or count a
    stored LF as one octet; not without end, which would fill the disk.  A line may be as
    long: mail without line breaks exists (a 150 MB message of one line was refused every
    run under the connection's 8 MiB bound), and the data is streamed to disk whatever its
    lines."""
    return 2 * size + RETR_SLACK


class PumpLoop:
    """Keep a window of RETR/DELE in flight; stage RETR data as blobs; group-commit them."""

    # Received bytes of one message are kept up to this size and then staged in one go (one
    # hash and one zstd call); a larger message streams through a BlobWriter in pieces of
    # about this size, so no message is ever held whole.
    PIECE = 1024 * 1024

    def __init__(
        self,
        fetcher: AccountFetcher,
        session: Pop3Session,
        to_fetch: list[ListedMessage],
        checks: list[Check],
        listing_time: str,
        now: datetime,
        suspects: dict[str, tuple[LiveUidl, bool]] | None = None,
    ) -> None:
        self.f = fetcher
        # shared with _drain's: a check that fails adds its message while the loop runs
        self.suspects = suspects if suspects is not None else {}
        self.session = session
        self.to_fetch = deque(to_fetch)
        self.checks = deque(checks)
        self.head = bytearray()  # of the TOP answer being received
        self.deletes: deque[tuple[int, int]] = deque()
        self.listing_time = listing_time
        self.delete_new = fetcher.deletable(listing_time, now)
        self.inflight: deque[tuple[pop3.Command, ListedMessage | int | Check]] = deque()
        self.batch: Batch = []
        self.batch_size = 0
        self.commits_pending = 0
        self.chunks: list[bytes] = []  # of the message being received, not yet written
        self.chunk_bytes = 0
        self.writer: BlobWriter | None = None  # for a message larger than PIECE
        self.last_data = b""  # the last piece of data received (for _bare_lf)
        self.crlf_seen = False  # in the data of the RETR answer being received
        self.lf_dot_answer = False  # and LF "." LF then a status line in it, before any CRLF
        self.first_byte_dot = False  # and whether it starts with "." (doubtful_first_dot)
        self.dot_doubtful: set[int] = set()  # msgnos: doubtful_first_dot, never deleted
        self.progressed = 0  # messages committed that a next session will not fetch again
        self.retr_octets = 0  # of the RETR answer being received
        self.retr_bound = 0  # and how many it may run to (retr_bound())
        self.dele_acked: list[int] = []
        # messages of a server without UIDL: no row to mark, so (sha256, size) by msgno
        self.without_uidl: dict[int, tuple[str, int]] = {}
        self.deleted_without_uidl: list[tuple[str, int]] = []
        self.deleted_ids: list[int] = []
        self.done = 0
        self.retr_inflight = 0
        self.window = PIPELINE_WINDOW if session.conn.pipelining else 1
        self.committer: GroupCommitter | None = None

    def run(self) -> None:
        self.committer = GroupCommitter(self.f.store, self._record)
        try:
            self._pump()
        except MailvaultError:
            # The session broke (cut, garbage, a message over the line bound): the messages
            # received whole before it are committed all the same, so a rerun, or the next
            # session, does not fetch them again.  No DELE goes out on this connection.
            if self.batch:
                with contextlib.suppress(MailvaultError):
                    self._request_commit()
            raise
        finally:
            if self.writer is not None:
                self.writer.abort()
            self.committer.close()  # the catalog is this thread's again after this
            # Every staged file no commit linked: of a batch never handed over or never
            # committed (after a failure), and whatever an interruption left between two steps.
            self.f.store.remove_own_tmp()
            self._collect()
            if self.dele_acked:
                self.f.catalog.mark_dele_sent(self.dele_acked)
                self.deleted_ids = list(self.dele_acked)
        self.committer.raise_error()

    def _pump(self) -> None:
        committer = self.committer
        assert committer is not None
        while True:
            if committer.finished:
                self._collect()
            self._fill()
            if not self.inflight:
                if self.batch:
                    self._request_commit()
                if self.commits_pending:
                    committer.wait_finished()
                    if not committer.finished:  # cannot happen: a commit finishes or raises
                        raise RuntimeError("a requested commit neither finished nor failed")
                    self._collect()
                    continue
                return
            try:
                event = self.session.next_event()
            except OverlongLine as exc:
                command, subject = self.inflight[0]
                if isinstance(command, pop3.Retr) and isinstance(subject, ListedMessage):
                    raise Unfetchable(subject, str(exc)) from None
                raise
            except Stalled:
                data = self.last_data if isinstance(self.inflight[0][0], pop3.Retr) else b""
                if data.endswith(b"\n.\n") or (
                    data.endswith(b"\n.\r\n") and not data.endswith(b"\r\n.\r\n")
                ):
                    raise self._bare_lf() from None
                raise
            self._handle(event)

    def _fill(self) -> None:
        """Top the window up once it is half empty, so commands go out in batches."""
        if len(self.inflight) > self.window // 2:
            return
        batch: list[pop3.Command] = []
        while len(self.inflight) < self.window:
            if self.deletes:
                msgno, row_id = self.deletes.popleft()
                cmd: pop3.Command = pop3.Dele(msgno)
                self.inflight.append((cmd, row_id))
            elif self.checks:
                check = self.checks.popleft()
                cmd = pop3.Top(check.msg.msgno, 0)
                self.inflight.append((cmd, check))
            elif self.to_fetch:
                msg = self.to_fetch.popleft()
                cmd = pop3.Retr(msg.msgno, max_line=retr_bound(msg.size))
                self.inflight.append((cmd, msg))
                self.retr_inflight += 1
            else:
                break
            batch.append(cmd)
            if not self.session.conn.pipelining:
                break
        if batch:
            self.session.send_many(batch)

    def _handle(self, event: pop3.Event) -> None:
        command, subject = self.inflight[0]
        if type(event) is pop3.Data:
            if isinstance(command, pop3.Top):
                if len(self.head) < TOP_LIMIT:
                    self.head += event.data
            else:
                self._data(event.data)
            return
        if isinstance(command, pop3.Top):
            assert isinstance(subject, Check)
            if isinstance(event, pop3.Ok):
                self.head = bytearray()  # the header follows
            elif isinstance(event, pop3.End | pop3.Err):
                self.inflight.popleft()
                head = bytes(self.head[:TOP_LIMIT]) if isinstance(event, pop3.End) else None
                # an empty answer shows no header: as a refused TOP, not another header (due
                # messages of such a server were downloaded again every run, never deleted)
                head = head or None
                self._checked(subject, head)
            else:
                raise ProtocolError(
                    f"unexpected {event!r} in answer to TOP", account=self.f.account.name
                )
        elif isinstance(command, pop3.Retr):
            assert isinstance(subject, ListedMessage)
            if isinstance(event, pop3.Ok):  # the data follows
                self.retr_octets, self.retr_bound = 0, retr_bound(subject.size)
                self.last_data, self.crlf_seen, self.lf_dot_answer = b"", False, False
            elif isinstance(event, pop3.End):
                self.inflight.popleft()
                self.last_data = b""  # the answer ended: no stall of its to explain
                self._received(subject)
            elif isinstance(event, pop3.Err):
                self.inflight.popleft()
                self.retr_inflight -= 1
                if subject.uidl is not None:
                    self.f.refused.add(subject.uidl)
                self.f.report.errors.append(
                    f"RETR of {subject.label} refused: -ERR {event.text}; if the message is "
                    "still on the server, the next run tries it again"
                )
            else:
                raise ProtocolError(
                    f"unexpected {event!r} in answer to RETR", account=self.f.account.name
                )
        elif isinstance(command, pop3.Dele):
            assert isinstance(subject, int)
            self.inflight.popleft()
            if isinstance(event, pop3.Ok):
                self.dele_acked.append(subject)
                if subject < 0 and command.msg in self.without_uidl:
                    self.deleted_without_uidl.append(self.without_uidl.pop(command.msg))
            elif isinstance(event, pop3.Err):
                self.f.report.errors.append(f"DELE {command.msg} refused: -ERR {event.text}")

    def _delete_new(self, msg: ListedMessage, staged: StagedBlob, row_id: int) -> None:
        """DELE a message just committed once ``TOP n 0`` shows the header of what RETR gave:
        a server that serves the wrong message for a RETR (another message's bytes, new to
        the vault or not; in this session or a later one) would otherwise have the real
        message deleted unread, and only TOP, asked for this very message, can tell.  One
        small pipelined command per deleted message, sent with the DELEs.  A server without
        TOP (it is optional) is taken at its RETR's word, as before."""
        row = LiveUidl(row_id, msg.uidl or "", staged.digest, staged.size, "", None, msg.size)
        capabilities = self.session.capabilities
        if capabilities and "TOP" not in capabilities:  # TOP is optional (RFC 1939, 2449)
            self._delete_at_size(msg, row, msg.msgno in self.dot_doubtful)  # RETR's word
            return
        self.checks.append(Check(msg, row, downloaded=True))

    def _delete_at_size(self, msg: ListedMessage, row: LiveUidl, first_dot: bool) -> None:
        """DELE if what is stored has LIST's size.  TOP shows the header only: a RETR cut short
        (a server that does not stuff a body line "."), or another message with the same
        header, passed it and had the real message deleted unread.  ``first_dot``: the
        stored copy starts with "." (then one octet off is ``doubtful_first_dot``)."""
        if _size_as_listed(msg, row.size):
            self.deletes.append((msg.msgno, row.id))
        elif first_dot and row.size in (msg.size - 1, msg.size + 1):
            self._keep(msg, doubtful_first_dot(msg.label))
        else:
            self._keep(msg, kept_for_size(msg.label, row.size, msg.size))

    def _keep(self, msg: ListedMessage, warning: str) -> None:
        """Stored, and not deleted: named, and not asked again in this run (a capped run
        downloaded it again session after session)."""
        self.f.report.warnings.append(warning)
        if msg.uidl is not None:
            self.f.refused.add(msg.uidl)

    def _checked(self, check: Check, head: bytes | None) -> None:
        """The DELE of a message goes out only if TOP showed the header of its stored bytes.
        For a committed message found again, another header (or none) makes it a suspect,
        downloaded and archived before any DELE; for one just downloaded, another header
        leaves it on the server (a refused TOP leaves its RETR to go by)."""
        msg, row = check.msg, check.row
        if head is not None and self.f.same_header(head, row.sha256):
            self._delete_at_size(msg, row, head.startswith(b"."))  # (the stored header's)
            return
        if check.downloaded and head is None:  # TOP refused, or empty: RETR's word alone
            self._delete_at_size(msg, row, msg.msgno in self.dot_doubtful)
            return
        if check.downloaded:
            self.f.report.warnings.append(
                f"TOP of {msg.label} shows another header than what its RETR gave: the server "
                "may have served the wrong message, so it is not deleted (the next run checks "
                "it again)"
            )
            if msg.uidl is not None:  # left alone for the rest of the run (no session loop)
                self.f.refused.add(msg.uidl)
            return
        if head is not None:  # TOP answered, with another header than the committed message's
            self.f.contradicted.add(row.uidl)
        self.f.note_header_differs(row)
        self.suspects[row.uidl] = (row, True)
        if row.uidl not in self.f.refused:
            self.to_fetch.append(msg)
            self.f.progress.expect(len(self.to_fetch) + self.retr_inflight)

    def _bare_lf(self) -> ProtocolError:
        """The session stalled after data ending in LF "." LF: the end of the answer from a
        server that ends lines with a bare LF.  Said so, instead of a stall to wait out."""
        host = self.f.account.host
        return ProtocolError(
            f"{host} ends message lines with a bare LF, not CRLF as RFC 1939 requires (its "
            'answer ended with LF "." LF, so it never ends for a client); nothing of that '
            "message was stored: the server's operator must fix it",
            account=self.f.account.name,
        )

    def _data(self, data: bytes) -> None:
        if not self.crlf_seen:  # a message with a CRLF line end is not from such a server
            joint = self.last_data[-8:] + data[:16]
            for mark in _NEXT_ANSWER_AFTER_LF_DOT:
                at = data.find(mark)
                if (at >= 0 and b"\r\n" not in data[:at]) or mark in joint:
                    self.lf_dot_answer = True  # judged by its size when it ends (_received)
            self.crlf_seen = b"\r\n" in data
        if self.retr_octets == 0:
            self.first_byte_dot = data.startswith(b".")
        self.last_data = data
        self.retr_octets += len(data)
        if self.retr_octets > self.retr_bound:
            command, subject = self.inflight[0]
            assert isinstance(subject, ListedMessage)
            raise Unfetchable(
                subject,
                f"RETR sent more than {self.retr_bound:,} octets for the {subject.size:,} LIST "
                "announced (a server sending without end?)",
            )
        self.chunks.append(data)
        self.chunk_bytes += len(data)
        if self.chunk_bytes >= self.PIECE:
            self._write_chunks()

    def _write_chunks(self) -> None:
        """Stream what has arrived of a large message into its BlobWriter."""
        if self.writer is None:
            self.writer = self.f.store.writer()
        for chunk in self.chunks:
            self.writer.write(chunk)
        self.chunks, self.chunk_bytes = [], 0

    def _stage(self) -> StagedBlob:
        """The message just received, written to tmp/ (not yet durable)."""
        if self.writer is None:  # all of it in memory, under PIECE: one go
            chunks = self.chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.chunks, self.chunk_bytes = [], 0
            return self.f.store.stage(data)
        self._write_chunks()
        assert self.writer is not None
        staged, self.writer = self.writer.finish(), None
        return staged

    def _received(self, msg: ListedMessage) -> None:
        if self.lf_dot_answer and not _size_as_listed(msg, self.retr_octets):
            # the next pipelined answer taken for this message's data, or a message holding
            # such text on a server whose LIST sizes are approximate: this message is not
            # taken (a message of LIST's size is stored as it is); the others are
            raise Unfetchable(
                msg,
                'its data holds LF "." LF and then a status line, and its size is not what '
                "LIST said: a server ending lines with a bare LF (its operator must fix it), "
                "or such text in the message",
            )
        staged = self._stage()
        if self.first_byte_dot and staged.size in (msg.size - 1, msg.size + 1):
            self.dot_doubtful.add(msg.msgno)
        if msg.size > 0 and staged.size == 0:  # (Dovecot serves an empty message as CRLF)
            self._cut_short(msg, staged.size)
            return
        # +2: Dovecot (and others) end a message stored without a final line break with one
        # CRLF that LIST does not count (RFC 1939 wants the terminator on its own line)
        if msg.size != staged.size and staged.size != msg.size + 2:
            self.f.note_size_differs(
                f"{msg.label}: LIST said {msg.size} octets, RETR delivered {staged.size}"
            )
        self.batch.append((msg, staged))
        self.batch_size += staged.size
        self.done += 1
        self.f.progress.received(staged.size)
        self.retr_inflight -= 1
        retr_pending = self.retr_inflight > 0 or self.to_fetch
        if (
            len(self.batch) >= self.f.batch_messages
            or self.batch_size >= self.f.batch_bytes
            or not retr_pending
        ):
            self._request_commit()

    def _cut_short(self, msg: ListedMessage, delivered: int) -> None:
        """An empty RETR answer for a message LIST gives octets is not the message (a server
        that does not dot-stuff a first line that is a lone ".", Dovecot 2.3 for one, ends it
        at once, and the rest of it then comes where the next answer belongs).  Only an empty
        one: LIST sizes are estimates on some servers (Exchange counts its stored form, KBs
        more than small mail), and every message of such a server was refused.  Once
        committed, its UIDL would pass for archived mail for ever.  It is neither stored nor
        deleted; the session ends as for a message too long to take (``Unfetchable``), and a
        new one fetches the others; the next run tries it again."""
        raise Unfetchable(
            msg,
            f"RETR ended after {delivered} of the {msg.size:,} octets LIST announced (a server "
            "that does not dot-stuff a first line that is a lone '.'?)",
        )

    def _request_commit(self) -> None:
        assert self.committer is not None
        self.committer.put(self.batch)  # if it raises, run() removes the batch's files
        self.batch, self.batch_size = [], 0
        self.commits_pending += 1

    def _record(self, batch: Batch) -> Results:
        """On the commit thread, once the batch's blobs are durable: one catalog transaction;
        then content retention had purged loses its blob again (its UIDL row stays, so it is
        not downloaded again, and DELEd as committed mail is)."""
        results = self._commit(batch)
        # only content the vault knew can be purged: a batch of new mail costs no lookup
        known = [st.digest for (_, st), (fresh, _) in zip(batch, results, strict=True) if not fresh]
        purged = self.f.catalog.purged_among(known) if known else {}
        for m, st in batch:
            if st.digest not in purged:
                continue
            path = self.f.store.find(st.digest)
            if path is not None:
                path.unlink(missing_ok=True)
            self.f.report.warnings.append(
                f"message {m.msgno} (UIDL {m.uidl}) is mail retention purged at "
                f"{purged[st.digest]}: recorded as received, its bytes not kept again"
            )
        return results

    def _commit(self, batch: Batch) -> Results:
        f = self.f
        if not self.suspects:
            items = [
                Committed(st.digest, st.size, m.uidl, self.listing_time, m.size) for m, st in batch
            ]
            return f.catalog.commit_messages(
                f.account.name, f.run_id, f"pop3:{f.account.name}", items
            )
        # A suspect that is the committed content keeps its row; other content replaces it.
        kept: dict[int, tuple[bool, int | None]] = {}
        items, replaced, relisted = [], [], []
        for i, (m, st) in enumerate(batch):
            row = self.suspects[m.uidl][0] if m.uidl in self.suspects else None
            if row is not None and st.digest == row.sha256:
                kept[i] = (False, row.id)
                relisted.append((row.id, m.size))
                continue
            if row is not None:
                replaced.append(row.id)
            items.append(Committed(st.digest, st.size, m.uidl, self.listing_time, m.size))
        recorded = iter(
            f.catalog.commit_messages(
                f.account.name,
                f.run_id,
                f"pop3:{f.account.name}",
                items,
                replaced=replaced,
                relisted=relisted,
            )
        )
        return [kept[i] if i in kept else next(recorded) for i in range(len(batch))]

    def _collect(self) -> None:
        """Account for finished commits and queue their DELEs (never before the commit)."""
        assert self.committer is not None
        report = self.f.report
        while self.committer.finished:
            done = self.committer.finished.popleft()
            self.commits_pending -= 1
            for (msg, staged), (fresh, row_id) in zip(done.batch, done.results, strict=True):
                report.fetched += 1
                report.bytes += staged.size
                if not fresh:
                    report.duplicates += 1
                if fresh or msg.uidl is not None:  # without a UIDL, a duplicate comes again
                    self.progressed += 1
                row, deletable = self.suspects.get(msg.uidl or "", (None, False))
                if row is not None and row.id == row_id:  # the committed message after all
                    if deletable and msg.uidl in self.f.contradicted:
                        self.f.report.warnings.append(
                            f"RETR of {msg.label} gave the committed message, but TOP showed "
                            "another header: the server contradicts itself, so it is not "
                            "deleted (check the server)"
                        )
                        self.f.refused.add(str(msg.uidl))  # not asked again in this run
                    elif deletable:
                        # the same bytes again prove nothing of a server serving another
                        # message for this one: deleted as a new download is (TOP, or RETR's
                        # word only at LIST's size)
                        self._delete_new(msg, staged, row_id)
                elif row_id is not None and self.delete_new:
                    self._delete_new(msg, staged, row_id)
                elif self.delete_new and msg.uidl is None:
                    self.without_uidl[msg.msgno] = (staged.digest, staged.size)
                    self._delete_new(msg, staged, -1)
