"""What the tests need from outside the repository, and one way of saying it is missing.

A missing prerequisite is a failure, never a skip: `make test` installs every one of them
(Dovecot, notmuch) and CI has the shared corpora, so a missing one means a broken set-up that
must not pass silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def missing(what: str, fix: str) -> None:
    pytest.fail(f"{what} is missing: {fix} (`make test` installs everything)", pytrace=False)


def corpora_dir() -> Path:
    """The shared corpora (../shared/corpora beside the repository, or $MAILVAULT_CORPORA)."""
    env = os.environ.get("MAILVAULT_CORPORA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "corpora"
    if not (path / "MANIFEST.tsv").is_file():
        missing(f"the mail corpora at {path}", "put them there or set MAILVAULT_CORPORA")
    return path


def binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        missing(f"the {name} program", f"apt-get install {package}")
    assert found is not None
    return found
