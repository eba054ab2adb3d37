"""Shared pytest fixtures.  Keep each section small; add new sections below the last one."""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import settings

from mailvault.testkit.dovecot import Dovecot, dovecot_binary
from tests.prereq import missing

# Hypothesis fails an example that takes longer than 200 ms by default: a timed assertion,
# which a loaded CI machine turns into a flaky failure.  Speed is measured by `make bench`.
settings.register_profile("mailvault", deadline=None)
settings.load_profile("mailvault")

# --------------------------------------------------------------------------------------
# Dovecot: a private POP3 server per test (mailvault/testkit/dovecot.py).
# Without dovecot installed these tests fail, never skip (tests/prereq.py).
# --------------------------------------------------------------------------------------

DOVECOT_USER = "alice"
DOVECOT_PASSWORD = "alice-secret"


def require_dovecot() -> None:
    """Fail the calling test if dovecot is missing (never skip: `make test` installs it)."""
    if dovecot_binary() is None:
        missing("dovecot", "apt-get install dovecot-core dovecot-pop3d")


@pytest.fixture
def dovecot_factory(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """Make started Dovecot instances: ``factory(users=None, **Dovecot kwargs)``; all stopped after."""
    require_dovecot()
    started: list[Dovecot] = []

    def make(users: dict[str, str] | None = None, **kwargs: Any) -> Dovecot:
        base = tmp_path / f"dovecot{len(started)}"
        instance = Dovecot(base, users, **kwargs)
        started.append(instance)
        return instance.start()

    try:
        yield make
    finally:
        for instance in reversed(started):
            instance.stop()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A started Dovecot with user alice / alice-secret and an empty mailbox."""
    return dovecot_factory({DOVECOT_USER: DOVECOT_PASSWORD})


# --------------------------------------------------------------------------------------
# Export: the crafted messages (mbox quoting, line ends, odd headers) in a fresh vault.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crafted() -> list[bytes]:
    from tests.test_export_kit import crafted_messages

    return crafted_messages()


@pytest.fixture
def vault(tmp_path: Path, crafted: list[bytes]) -> Path:
    from tests.test_export_kit import add_messages, new_vault

    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted)
    return root


# --------------------------------------------------------------------------------------
# Secrets: mailvault masks every password it has used in any text it writes, for the life of
# the process (mailvault/redact.py).  Tests run many commands in one process: each starts
# with none registered, so one test's password ("wrong") does not mask another's output.
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    from mailvault.redact import forget_secrets

    forget_secrets()
    yield
    forget_secrets()


# --------------------------------------------------------------------------------------
# A crash of the pytest process itself (SIGSEGV, SIGBUS from a native library): `make test`
# sets MAILVAULT_TEST_CRASH_DIR, the traceback of every thread goes to a file there and the
# test running is named in another, and the Makefile prints both at the end, where CI's
# truncated log still shows them (pytest's own faulthandler prints at the start of a long
# dump, which the log cuts).
# --------------------------------------------------------------------------------------

_CRASH_DIR = os.environ.get("MAILVAULT_TEST_CRASH_DIR")
_crash_file: IO[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _crash_file
    if _CRASH_DIR and _crash_file is None:
        _crash_file = open(Path(_CRASH_DIR) / "traceback", "w")  # noqa: SIM115 (process-long)
        faulthandler.enable(_crash_file, all_threads=True)


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if _CRASH_DIR:
        (Path(_CRASH_DIR) / "running").write_text(nodeid + "\n", encoding="utf-8")
