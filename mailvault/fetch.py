"""`mailvault fetch`: drain POP3 accounts into the vault, deleting only what is committed.

Per message the order is fixed and is the product's central promise:

    RETR -> blob in tmp/ -> (batch) data synced, renamed, synced -> catalog row committed
         -> DELE (only if the account's policy says so) -> QUIT

A crash anywhere leaves a state the next run completes: an unpublished tmp file is discarded and
the message re-fetched; a committed message whose DELE or QUIT never happened is still listed by
the server, recognised by its UIDL, and deleted again without a download ("ghost messages").

This module is the account's policy: sessions and their retries, and, from each listing and
the catalog, which messages are new, which committed ones are due for DELE, which must be
downloaded again to check (the UIDL diff and the ghost messages).  What then happens on the
connection, the pipelined RETR/TOP/DELE window streaming into the store with group commits, is
:mod:`mailvault.pump`: the split is between deciding (once per session) and doing (event by
event), so each can be read without the other.

Group commit is the speed lever: a batch of messages costs (at most) two ``syncfs`` calls and one
catalog transaction, and the DELEs for that batch follow it down the same pipelined connection.
The commits run on a thread of their own (``GroupCommitter`` in ``mailvault.group_commit``), so
the socket keeps streaming while a batch is made durable; batches that queue up behind a slow
disk are committed together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import tenacity
import zstandard

from mailvault import pop3
from mailvault.catalog import Catalog, LiveUidl
from mailvault.config import AccountConfig
from mailvault.errors import (
    AuthenticationError,
    ConfigError,
    LoginDelay,
    MailboxInUse,
    MailvaultError,
    ProtocolError,
    Stalled,
    TransportError,
    from_storage_error,
)
from mailvault.pump import Check, PumpLoop, Unfetchable
from mailvault.redact import redact
from mailvault.secrets import resolve_secret
from mailvault.session import ListedMessage, Pop3Session, Trace
from mailvault.store import BlobStore
from mailvault.vault import Vault

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, int], None]  # account, messages done, messages total, bytes


@dataclass
class AccountReport:
    """What one account's fetch did; the JSON report is built from this."""

    account: str
    status: str = "ok"  # ok | failed | dry-run | interrupted
    listed: int = 0
    new: int = 0
    fetched: int = 0
    duplicates: int = 0
    deleted: int = 0
    bytes: int = 0
    retries: int = 0
    sessions: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    would_delete: int = 0
    would_check: int = 0  # dry run: committed UIDLs that would be downloaded again to check
    would_bytes: int = 0  # dry run: their size as LIST gives it
    config_error: bool = False  # failed on its configuration (a password source): exit 2

    def counts(self) -> dict[str, int]:
        keys = ("listed", "new", "fetched", "duplicates", "deleted", "bytes", "retries")
        return {k: getattr(self, k) for k in keys}

    def as_json(self) -> dict[str, Any]:
        data = {"account": self.account, "status": self.status, **self.counts()}
        data.update(sessions=self.sessions, errors=self.errors, warnings=self.warnings)
        if self.status == "dry-run":
            data["would_delete"] = self.would_delete
            data["would_check"] = self.would_check
            data["would_bytes"] = self.would_bytes
        return data


@dataclass
class _AccountProgress:
    """One account's progress over all the sessions of a run: a capped session's successor,
    or a retry, continues the count instead of starting again at 0."""

    show: Progress
    account: str
    done: int = 0
    total: int = 0
    bytes: int = 0

    def expect(self, remaining: int) -> None:
        """A session is about to fetch ``remaining`` messages (a later session's listing may
        hold mail that arrived after the first one's: the total grows, never shrinks)."""
        self.total = max(self.total, self.done + remaining)

    def received(self, size: int) -> None:
        self.done += 1
        self.bytes += size
        self.show(self.account, self.done, max(self.total, self.done), self.bytes)


def _retry_scale() -> float:
    """Tests shrink back-off with MAILVAULT_RETRY_SCALE; production waits use the defaults."""
    try:
        return float(os.environ.get("MAILVAULT_RETRY_SCALE", "1"))
    except ValueError:
        return 1.0


class _Wait(tenacity.wait.wait_base):
    """Exponential back-off with jitter, but never less than the server's LOGIN-DELAY."""

    def __init__(self, floor: Callable[[], float]) -> None:
        self.base = tenacity.wait_exponential_jitter(
            multiplier=2 * _retry_scale(), max=120 * _retry_scale(), jitter=_retry_scale()
        )
        self.floor = floor

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = self.base(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, LoginDelay | MailboxInUse):
            delay = max(delay, self.floor() * _retry_scale())
        return float(delay)


class AccountFetcher:
    """Fetch one account: sessions, retries, and what each session fetches and deletes (the
    pipelined RETR/DELE loop and its group commits are ``PumpLoop``'s)."""

    def __init__(
        self,
        vault: Vault,
        account: AccountConfig,
        *,
        dry_run: bool = False,
        trace: Trace | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.vault = vault
        self.account = account
        self.dry_run = dry_run
        self.cancel = cancel or threading.Event()  # set with interrupt(): Ctrl-C with --jobs
        self._session: Pop3Session | None = None
        # Each line says whose dialogue it is: with --jobs, several accounts share one file.
        self.trace: Trace | None = None
        if trace is not None:
            label, write = f"{account.name}:", trace
            self.trace = lambda line: write(f"{label} {line}")
        self.progress = _AccountProgress(progress or (lambda *_: None), account.name)
        self.report = AccountReport(account.name)
        self.finished = False  # run() returned: the report is the account's whole run
        self.store: BlobStore = vault.store()
        self.catalog: Catalog = vault.catalog()
        self.run_id: int | None = None
        self._login_delay = 0.0
        self._counted = False
        self._listed_uidls: set[str] = set()  # every UIDL a listing of this run showed
        self.refused: set[str] = set()  # UIDLs whose RETR the server refused in this run
        self.header_differs: set[str] = set()  # committed UIDLs whose TOP showed another header
        # committed UIDLs whose TOP answered with another header than the committed message's
        # (in any session of the run): a download that then gives the committed message again
        # is no proof for a DELE
        self.contradicted: set[str] = set()
        self._lockstep = False  # after a stall with pipelined commands in flight
        self._mailbox_changed = False  # the account names another host or user than before
        self._sizes_differ: list[str] = []  # note_size_differs
        self._uncapped = False  # max_messages_per_session lifted for the rest of the run
        self._deleted_in_run: set[str] = set()  # UIDLs whose deletion a QUIT +OK confirmed
        self._was: tuple[str, str] | None = None  # that (host, user), until logged in to the new
        self._secret: str | None = None  # resolved once per run, in memory for the run only
        self._token_renewed = False  # an xoauth2 token refused with [AUTH] was fetched again
        # how the server failed CAPA in this run: later sessions do not ask it (and do not
        # reconnect for it); kept for the run only, a server may be upgraded at any time
        self._capa_failure: str | None = None
        settings = vault.config.vault
        self.batch_messages = settings.commit_batch_messages
        self.batch_bytes = settings.commit_batch_bytes

    # -- the whole account ----------------------------------------------------------------------
    def run(self) -> AccountReport:
        acct = self.account
        interrupted = False
        try:
            self._was = self.catalog.mailbox_change(acct.name, acct.host, acct.user)
            self._mailbox_changed = self._was is not None
            self._note_other_names()
            if not self.dry_run:
                if self._was is None:  # else once logged in to the new mailbox
                    self.catalog.ensure_account(
                        acct.name, acct.host, acct.port, acct.user, acct.tls
                    )
                self.run_id = self.catalog.start_run(acct.name)
            retrying = tenacity.Retrying(
                retry=tenacity.retry_if_exception(
                    lambda e: (
                        isinstance(e, MailvaultError) and e.retryable and not self.cancel.is_set()
                    )
                ),
                sleep=self._sleep,
                stop=tenacity.stop_after_attempt(acct.retries + 1),
                wait=_Wait(lambda: self._login_delay),
                before_sleep=self._before_retry,
                reraise=True,
            )
            more = True
            while more:
                more = retrying(self._one_session)
            self._note_deletions_not_applied()
            if self.report.errors and self.report.status == "ok":  # a RETR or DELE refused
                self.report.status = "failed"
        except MailvaultError as exc:
            if self.cancel.is_set():  # the failure is interrupt()'s doing
                interrupted = True
                raise KeyboardInterrupt from None
            self.report.status = "failed"
            self.report.errors.append(str(exc))
            self.report.config_error = isinstance(exc, ConfigError)
        except pop3.LocalProtocolError as exc:  # the user or password cannot form a command
            self.report.status = "failed"
            self.report.config_error = True
            self.report.errors.append(
                f"{acct.config_path or 'mailvault.toml'}: accounts.{acct.name}: the user name "
                f"or the password cannot be sent in a POP3 command ({exc}); check user and "
                "the password source"
            )
        except Exception as exc:  # a full disk under SQLite, or a bug: reported, and the
            # other accounts still run
            self._failed_unexpectedly(exc, f"fetching account {acct.name}")
        except BaseException:  # Ctrl-C: the catalog says so
            interrupted = True
            raise
        finally:
            # Server text in errors and warnings may quote a password (see mailvault.redact).
            self.report.errors = [redact(e) for e in self.report.errors]
            self.report.warnings = [redact(w) for w in self.report.warnings]
            self._secret = None
            if self.run_id is not None:
                self._record_end(interrupted)
            self.catalog.close()
        self.finished = True
        return self.report

    def _failed_unexpectedly(self, exc: Exception, doing: str) -> None:
        """The account failed on something no step expects: a full disk under SQLite (named,
        with the fix) or a bug."""
        log.debug("%s: unexpected error", self.account.name, exc_info=True)
        self.report.status = "failed"
        storage = from_storage_error(exc, doing)
        self.report.errors.append(
            str(storage)
            if storage is not None
            else f"unexpected {type(exc).__name__} (a bug in mailvault; rerun with -vv and "
            "report it); what was committed is kept"
        )

    def _record_end(self, interrupted: bool) -> None:
        """Record the run's end in the catalog.  A failure to (the disk filled up by now) is
        this account's failure: raised from here it escaped the worker, dropped every
        account's report and exited 3.  The run's row then stays 'running' until the next
        run of the account closes it with what it committed (``Catalog.start_run``)."""
        assert self.run_id is not None
        status = "interrupted" if interrupted else self.report.status
        try:
            self.catalog.finish_run(self.run_id, status, self.report.counts(), self.report.errors)
        except Exception as exc:  # (interrupted: fetch_accounts reports it so all the same)
            self._failed_unexpectedly(exc, f"recording the end of the run of {self.account.name}")

    def interrupt(self) -> None:
        """From another thread: stop this account as soon as possible (Ctrl-C with --jobs).
        What was committed stays committed; a blocked read fails now, a back-off ends now."""
        self.cancel.set()
        session = self._session
        if session is not None:
            session.interrupt()

    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise KeyboardInterrupt

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.report.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("%s: %s; retrying in %.1f s", self.account.name, exc, wait)

    # -- one POP3 session -----------------------------------------------------------------------
    def _switch_mailbox(self) -> None:
        """Retire the old mailbox's UIDLs once logged in to the new one: a run that never got
        there (a typo in the host) retired them all, and with the typo fixed the whole
        mailbox was downloaded again."""
        was, acct = self._was, self.account
        if was is None:
            return
        if not self.dry_run:
            self.catalog.ensure_account(acct.name, acct.host, acct.port, acct.user, acct.tls)
        self._was = None
        self._warn(
            f"account {acct.name} now names {acct.user}@{acct.host} (was {was[1]}@{was[0]}): "
            "the UIDLs of the old mailbox do not apply to this one, so each message here is "
            "downloaded once and recognised by its content (nothing is stored twice, nothing "
            "deleted unread)"
        )

    def _one_session(self) -> bool:
        """Run one session; return True if a per-session cap left messages for another one."""
        account = self.account
        if self._lockstep:
            account = dataclasses.replace(account, pipelining="off")
        session = Pop3Session(
            account, self._resolve_secret, self.trace, capa_failure=self._capa_failure
        )
        self.report.sessions += 1
        self._session = session
        try:
            self._connect(session)
            self._login_delay = float(session.login_delay or 0)
            if self.run_id is not None:
                self.catalog.record_session(self.run_id, session.facts.as_dict())
            session.login()
            self._switch_mailbox()
            listed, has_uidl, mismatch = session.listing()
            if mismatch is not None:
                self._warn(mismatch)
            return self._drain(session, listed, has_uidl)
        except TransportError as exc:
            if session.conn.pipelining and isinstance(exc, Stalled) and not self._lockstep:
                # Some servers advertise PIPELINING and then drop commands sent together:
                # the retry goes lock-step (slower, but it gets the mail).
                self._lockstep = True
                self.report.warnings.append(
                    f"{self.account.host} stalled with pipelined commands in flight; retried "
                    'without pipelining (set pipelining = "off" for this account to skip the wait)'
                )
                session.close()
                return self._one_session()  # at once, and not counted against `retries`
            raise
        except AuthenticationError as exc:
            if not self._renew_token(exc):
                raise
            session.close()
            return self._one_session()  # at once, with the new token; not a retry
        except Unfetchable as exc:
            msg = exc.message
            if msg.uidl is None:
                raise ProtocolError(
                    f"message {msg.msgno} ({msg.size:,} octets) not archived: {exc}; without "
                    "UIDL it cannot be skipped, so nothing after it is fetched either (fetch it "
                    "with another client, or remove it from the server)",
                    account=self.account.name,
                ) from None
            if msg.uidl in self.refused:
                raise
            # Skipped for the rest of this run (a new session picks up after it); reported,
            # and tried again next run.
            self.refused.add(msg.uidl)
            self.report.errors.append(
                f"{msg.label} ({msg.size:,} octets) not archived: "
                f"{exc}; the run went on without it, and it is tried again next run (fetch it with "
                "another client, or remove it from the server)"
            )
            return True
        finally:
            self._session = None
            session.close()

    def _connect(self, session: Pop3Session) -> None:
        """Connect, and note a failed CAPA whether or not the reconnect after it worked: the
        run's next sessions (a retry, a capped session's successor) do not ask it again.
        Noted here and nowhere else, so its one warning comes before any the session adds."""
        try:
            session.connect()
        finally:
            if self._capa_failure is None and (warning := session.capa_warning()) is not None:
                self._capa_failure = session.capa_failure
                self._warn(warning)

    def _resolve_secret(self) -> str:
        """The password or token, resolved at the first login of the run and kept for the
        others: a password_command may prompt (gpg, pass), which must happen once, not at
        each reconnect of a capped session or retry."""
        if self._secret is None:
            self._secret = resolve_secret(self.account)
        return self._secret

    def _renew_token(self, exc: AuthenticationError) -> bool:
        """Whether to log in again with a fresh secret: only an XOAUTH2 token refused with
        [AUTH] (it expires within the hour, so one kept since the first session of a long
        run may be stale), and only once a run, so a refused token cannot loop."""
        if self.account.auth != "xoauth2" or exc.code != "AUTH" or self._token_renewed:
            return False
        self._token_renewed = True
        self._secret = None
        log.info("%s: the XOAUTH2 token was refused; asking its source again", self.account.name)
        return True

    def same_header(self, head: bytes | None, sha256: str) -> bool:
        """Whether ``head``, what ``TOP n 0`` gave (a few KB, not a download), is the header of
        the committed message; False if it differs or the server refused TOP (None)."""
        if not head:
            return False
        stored = bytearray()
        want = len(head)
        try:
            with self.store.open(sha256) as stream:
                while len(stored) < want and (chunk := stream.read(want - len(stored))):
                    stored += chunk
        except (OSError, MailvaultError, zstandard.ZstdError):
            return False
        return stored[: len(head)] == head

    def deletable(self, first_seen: str, now: datetime) -> bool:
        """Whether the account's policy deletes a message first listed at ``first_seen``."""
        if self.account.delete != "after-commit":
            return False
        days = self.account.delete_after_days
        return days == 0 or datetime.fromisoformat(first_seen) <= now - timedelta(days=days)

    def _drain(self, session: Pop3Session, listed: list[ListedMessage], has_uidl: bool) -> bool:
        report = self.report
        now = datetime.now(UTC)
        listing_time = now.isoformat()
        if not has_uidl:
            warning = (
                f"{self.account.host} does not support UIDL: every message is downloaded "
                "each run and de-duplicated by content hash"
            )
            if self.account.delete == "after-commit" and self.account.delete_after_days:
                warning += (
                    "; delete_after_days cannot be honoured without UIDL (a message cannot be "
                    "recognised in a later run), so nothing is deleted"
                )
            self._warn(warning)
        # (a dry run of a repointed account leaves the old mailbox's UIDLs as they are)
        known = has_uidl and not (self.dry_run and self._mailbox_changed)
        live = self.catalog.live_uidls(self.account.name) if not self.dry_run or known else {}
        on_server = {m.uidl for m in listed if m.uidl is not None}
        if has_uidl and not self.dry_run:
            gone = [row.id for uidl, row in live.items() if uidl not in on_server]
            self.catalog.mark_deleted(gone, confirmed_by_quit=False)
        new = [m for m in listed if m.uidl is None or m.uidl not in live]
        # Deleted in this run, QUIT +OK, and listed again: the server keeps what it confirms
        # deleting.  Downloaded once per run: with a per-session cap every next session
        # found the same messages "new", archived and "deleted" them again, and never ended.
        again = [m for m in new if m.uidl is not None and m.uidl in self._deleted_in_run]
        if again:
            new = [m for m in new if m.uidl is None or m.uidl not in self._deleted_in_run]
            self._warn(
                f"{self.account.host} lists again messages whose deletion it confirmed in this "
                "run (QUIT +OK): it does not apply deletions, so they stay on the server (not "
                "downloaded again in this run; check the server's POP3 deletion settings)"
            )
        ghosts = [(m, live[m.uidl]) for m in listed if m.uidl is not None and m.uidl in live]
        # A committed UIDL is trusted to be the committed message only while LIST gives it the
        # size it gave when the message was committed: a server that applied a QUIT whose reply
        # was lost, or whose mail another client deleted, may have given the UIDL to new mail
        # since.  Any other is downloaded first ("suspects"): the same content is then kept
        # (and DELEd if due), other content is archived as new mail, never deleted unread.
        checks: list[Check] = []  # due for DELE once TOP shows the committed header
        suspects: dict[str, tuple[LiveUidl, bool]] = {}  # uidl -> (row, deletable)
        backfill: list[tuple[int, int]] = []  # rows from before LIST sizes were recorded
        for m, row in ghosts:
            if row.uidl in self.refused:  # left alone for the rest of this run (mailvault.pump)
                continue
            deletable = self.deletable(row.first_seen, now)
            if row.listed_size is None and not deletable:
                backfill.append((row.id, m.size))  # trusted as before; compared from now on
                continue
            if _same_size(m.size, row):
                if row.listed_size is None:
                    backfill.append((row.id, m.size))
                if not deletable:
                    continue
                # Same UIDL, same size is not enough to delete unread: another client may
                # have deleted the message (or a DELE we sent been applied without its QUIT
                # reaching us) and the server given the UIDL to new mail of the same size
                # since, while it waited its delete_after_days.  Its header must match too:
                # the pump loop (mailvault.pump) asks TOP (pipelined like RETR) and DELEs only
                # a match.
                if row.uidl not in self.header_differs:
                    checks.append(Check(m, row))
                    continue
            suspects[row.uidl] = (row, deletable)
            if not _same_size(m.size, row):
                was = (
                    f"listed with {row.listed_size} octets when committed"
                    if row.listed_size is not None
                    else f"committed with {row.size} octets"
                )
                self._warn(f"UIDL {row.uidl}: {was}, now listed with {m.size}; {_RECHECK}")
        if backfill and not self.dry_run:
            self.catalog.record_listed_sizes(backfill)
        self._count_listing(listed, new)
        if self.dry_run:
            report.status = "dry-run"
            report.would_check = len([u for u in suspects if u not in self.refused])
            report.would_bytes = sum(m.size for m in new) + sum(
                m.size for m in listed if m.uidl in suspects
            )
            # A real run DELEs the committed messages due only if TOP shows their header;
            # a dry run does not pay for the TOPs and counts them all.
            report.would_delete = len(checks) + (
                len(new) if self.deletable(listing_time, now) else 0
            )
            self._quit(session, deleting=False)
            return False
        cap = self.account.max_messages_per_session
        no_uidl = any(m.uidl is None for m in listed)  # a server without UIDL, or UIDL gaps
        if self._uncapped:
            cap = 0
        if cap and no_uidl and not self.deletable(listing_time, now):
            # Without UIDLs, and without deleting what is committed, the next session would
            # list the same messages first again: one session takes them all.  (With a UIDL
            # answer leaving some out, each session downloaded those again and took that for
            # progress: the run never ended.)
            cap = 0
            warning = (
                "max_messages_per_session has no effect without UIDL unless messages are "
                "deleted as they are committed (delete_after_days = 0): one session fetches all"
            )
            self._warn(warning)
        to_fetch = [m for m in listed if m.uidl in suspects] + new
        to_fetch = [m for m in to_fetch if m.uidl is None or m.uidl not in self.refused]
        # A cap counts the committed messages checked for deletion as well as the fetches:
        # a capped session QUITs after that many, so its deletions take effect in steps.
        # Downloads first: a server that never lets go of what it was told to delete (a
        # QUIT it does not answer) had the cap spent on the same deletions session after
        # session, and new mail was never archived.
        batch_now = to_fetch[:cap] if cap else to_fetch
        checks_now = checks[: max(cap - len(batch_now), 0)] if cap else checks
        self.progress.expect(len(to_fetch))
        refused_before = len(self.refused)
        loop = PumpLoop(self, session, batch_now, checks_now, listing_time, now, suspects)
        loop.run()
        confirmed = self._quit(session, deleting=bool(loop.dele_acked))
        if confirmed and loop.deleted_ids:
            report.deleted += len(loop.deleted_ids)  # applied by the server, recorded or not
            try:
                self._deleted_in_run.update(self.catalog.uidls_of(loop.deleted_ids))
                self.catalog.mark_deleted(loop.deleted_ids, confirmed_by_quit=True)
                if loop.deleted_without_uidl:
                    self.catalog.record_deleted_without_uidl(
                        self.account.name, loop.deleted_without_uidl
                    )
            except Exception:  # a full disk: the error says why; this says what it cost
                self._warn(
                    f"the server applied {len(loop.deleted_ids)} deletions of archived "
                    "messages that the catalog could not record; the next run records them "
                    "as gone from the server (server-gone in the ledger)"
                )
                raise
        # Another session only for what the cap left, and only after progress (a message
        # archived or deleted, or a refused one that later sessions skip): a server that
        # refuses every RETR must not be asked again and again.
        # (a duplicate of mail without a UIDL, or its deletion, is no progress: it comes again)
        deleted = any(row_id >= 0 for row_id in loop.deleted_ids)
        progress = loop.progressed > 0 or deleted or len(self.refused) > refused_before
        more = bool(cap) and len(checks) + len(to_fetch) > cap
        if more and not progress and no_uidl and loop.done and not self._uncapped:
            # mail without UIDL came again (its deletion not applied): the rest of it in one
            # session without the cap, rather than the same messages for ever
            self._uncapped = True
            self._warn(
                f"{self.account.host} lists again mail without a UIDL that was deleted in this "
                "run: max_messages_per_session is lifted for the rest of the run"
            )
            return True
        return more and progress

    def _quit(self, session: Pop3Session, *, deleting: bool) -> bool:
        """QUIT; whether the server confirmed it.  A server that closes the connection instead
        of answering failed the account every run, with nothing to lose: where no DELE was
        sent, that answer confirms nothing, and the session's work is done.  Where DELEs were
        sent it is an error as before (retried: a new session finds out what was applied)."""
        try:
            return session.quit()
        except (TransportError, ProtocolError) as exc:
            if deleting:
                raise
            self._warn(
                f"{self.account.host} closed the connection without answering QUIT "
                f"({exc.cause}); no deletion was pending, so nothing is lost"
            )
            return False

    def _count_listing(self, listed: list[ListedMessage], new: list[ListedMessage]) -> None:
        """listed and new count each message once over the run: retries and capped sessions
        list again, so the first listing counts, and after it only mail that arrived since
        (a UIDL not listed before), so that fetched never exceeds new.  Without UIDLs a later
        listing cannot tell arrivals apart: the first listing's counts stay."""
        if not self._counted:
            self.report.listed, self.report.new, self._counted = len(listed), len(new), True
            self._listed_uidls = {m.uidl for m in listed if m.uidl is not None}
            return
        arrived = [m for m in listed if m.uidl is not None and m.uidl not in self._listed_uidls]
        self._listed_uidls.update(m.uidl for m in arrived if m.uidl is not None)
        fresh = {m.uidl for m in new}
        self.report.listed += len(arrived)
        self.report.new += sum(1 for m in arrived if m.uidl in fresh)

    def _note_other_names(self) -> None:
        """The first fetch of an account whose mailbox another account name has archived (a
        renamed account, most often): UIDLs are kept per account, so this one downloads the
        mailbox again, each message recognised by its content.  Said, for it looks like a
        fresh mailbox otherwise."""
        acct = self.account
        if self.catalog.account_known(acct.name):
            return
        others = self.catalog.other_names_of(acct.name, acct.host, acct.user)
        # another configured name for the mailbox: one mailbox set up twice, not a rename
        if others and not set(others) & set(self.vault.config.accounts):
            self._warn(
                f"account {acct.name} is new, but {acct.user}@{acct.host} was archived as "
                f"account {', '.join(others)}: UIDLs are kept per account name, so its mail is "
                "downloaded once more and recognised by its content (nothing stored twice); "
                "to keep the old name's UIDLs, rename the account back in mailvault.toml"
            )

    def _note_deletions_not_applied(self) -> None:
        """A server that confirms DELE (QUIT +OK) but keeps the mail: each run its messages
        come back under the same UIDL with the same content, are downloaded again (recognised
        as duplicates, nothing stored twice) and "deleted" again.  Said, or the mailbox only
        grows while every report counts deletions.  Only rows we sent a DELE for count: a
        mailbox-changed row (host or user changed) was closed without one."""
        if self.run_id is None:
            return
        again = self.catalog.conn.execute(
            """SELECT count(DISTINCT now.id) FROM uidls AS now JOIN uidls AS was
               ON was.account = now.account AND was.uidl = now.uidl AND was.sha256 = now.sha256
               AND was.id < now.id AND was.deleted_confirmed_at IS NOT NULL
               AND was.dele_sent_at IS NOT NULL
               WHERE now.run_id = ?""",
            (self.run_id,),
        ).fetchone()[0]
        if again:
            self._warn(
                f"{again} message(s) the server confirmed deleted in an earlier run (QUIT +OK) "
                "are on it again, under the same UIDL with the same content: it does not apply "
                "deletions (check the server, its expunge settings or quota); nothing was "
                "stored twice"
            )

    def _warn(self, warning: str) -> None:
        if warning not in self.report.warnings:
            self.report.warnings.append(warning)

    def note_size_differs(self, what: str) -> None:
        """A message RETR gave with another size than LIST's: stored as delivered.  One
        warning per run, not one per message: servers that estimate LIST sizes (Exchange)
        made a warning of every message of a first fetch."""
        self._sizes_differ.append(what)
        prefix = "stored what RETR delivered, whose size LIST did not give: "
        warning = (
            what
            if len(self._sizes_differ) == 1
            else (f"{len(self._sizes_differ)} messages, the first {self._sizes_differ[0]}")
        )
        self.report.warnings = [w for w in self.report.warnings if not w.startswith(prefix)]
        self.report.warnings.append(prefix + warning)

    def note_header_differs(self, row: LiveUidl) -> None:
        """TOP did not show a committed message's header: not deleted unread, and not asked
        again this run (the next session downloads it to check)."""
        self.header_differs.add(row.uidl)
        self._warn(
            f"UIDL {row.uidl}: TOP does not show the committed message's header (the server "
            f"may have given the UIDL to new mail, or refuses TOP); {_RECHECK}"
        )


_RECHECK = "downloaded again to check before any DELE"


def fetch_accounts(
    vault: Vault,
    accounts: list[AccountConfig],
    *,
    jobs: int = 1,
    dry_run: bool = False,
    trace: Trace | None = None,
    progress: Progress | None = None,
    reports_if_interrupted: list[AccountReport] | None = None,
) -> list[AccountReport]:
    """Fetch several accounts, ``jobs`` at a time; one account failing never stops the others.

    Ctrl-C or SIGTERM ends the run with KeyboardInterrupt, after each account has recorded
    its run; ``reports_if_interrupted`` is then filled with every account's report as far as
    it got (status "interrupted" for each that did not finish, started or not), so that a
    nightly job stopped by its service manager still says what it archived.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not dry_run:
        vault.store().clean_tmp()
    # Named twice, an account would run twice at once with --jobs: two sessions on one
    # mailbox, and two commits of the same UIDLs.
    accounts = list({account.name: account for account in accounts}.values())
    fetchers = [
        AccountFetcher(vault, account, dry_run=dry_run, trace=trace, progress=progress)
        for account in accounts
    ]
    started = time.monotonic()
    try:
        if jobs <= 1 or len(accounts) <= 1:  # no thread: Ctrl-C and profilers see the real work
            reports = [fetcher.run() for fetcher in fetchers]
        else:
            pool = ThreadPoolExecutor(max_workers=jobs)
            try:
                futures = [pool.submit(fetcher.run) for fetcher in fetchers]
                reports = [future.result() for future in futures]
            except KeyboardInterrupt:  # only the main thread gets it: stop the others at once
                for fetcher in fetchers:
                    fetcher.interrupt()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        if reports_if_interrupted is not None:
            for fetcher in fetchers:
                if not fetcher.finished:
                    fetcher.report.status = "interrupted"
            reports_if_interrupted[:] = [fetcher.report for fetcher in fetchers]
        raise
    log.debug("fetched %d accounts in %.2f s", len(accounts), time.monotonic() - started)
    return reports


__all__ = ["AccountFetcher", "AccountReport", "fetch_accounts"]


def _same_size(listed: int, row: LiveUidl) -> bool:
    """Whether LIST gives a committed UIDL the size it had.  A row from before LIST's sizes
    were recorded has only the stored size, which is LIST's + 2 for a message the server
    ends with a CRLF LIST does not count (Dovecot, for mail stored without a final line
    break): such rows were downloaded again, with a warning about a reused UIDL, once due."""
    if row.listed_size is None and row.size == listed + 2:
        return True
    return listed == row.committed_listing
