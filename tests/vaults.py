"""Helpers for tests that run the real CLI against a vault."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mailvault.cli import cli, commands  # noqa: F401  (registers the commands)
from mailvault.store import BlobStore
from mailvault.vault import init_vault

PASSWORD_ENV = "MAILVAULT_TEST_PASSWORD"


def account_toml(name: str, **keys: Any) -> str:
    lines = [f"[accounts.{name}]"]
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def holding_the_lock(root: Path, command: str) -> Iterator[int]:
    """Another process holds the vault's write lock as ``command`` (`retention apply`, say)
    for the duration; yields its pid, which the lock file names."""
    ready = root.parent / f".{root.name}-lock-held"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from mailvault.vault import open_vault
            with open_vault(Path({str(root)!r})).write_lock({command!r}):
                Path({str(ready)!r}).touch()
                time.sleep(60)
        """)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )  # fmt: skip
    try:
        while not ready.exists():
            assert holder.poll() is None, "the lock holder died"
            time.sleep(0.02)
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        ready.unlink(missing_ok=True)


def make_vault(root: Path, accounts: dict[str, dict[str, Any]], **vault_settings: Any) -> Path:
    """A fresh vault whose mailvault.toml holds the given accounts (plain keys as TOML)."""
    init_vault(root)
    text = "".join(
        account_toml(name, **{"password_env": PASSWORD_ENV, "user": "alice", **keys})
        for name, keys in accounts.items()
    )
    if vault_settings:
        text += "[vault]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vault_settings.items())
    (root / "mailvault.toml").write_text(text, encoding="utf-8")
    return root


def run_cli(
    vault: Path, *args: str, password: str = "alice-secret", env: dict[str, str] | None = None
) -> Result:
    environment = {PASSWORD_ENV: password, "MAILVAULT_RETRY_SCALE": "0.001", **(env or {})}
    return CliRunner().invoke(
        cli, ["--vault", str(vault), *args], env=environment, catch_exceptions=False
    )


def fetch_json(vault: Path, *args: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    result = run_cli(vault, "fetch", "--json", *args, **kwargs)
    return result.exit_code, json.loads(result.stdout)


def stored_digests(vault: Path) -> list[str]:
    """Blob names on disk, each verified to hash to its name."""
    store = BlobStore(vault)
    names = list(store.iter_digests())
    for digest in names:
        assert store.rehash(digest) == digest, f"blob {digest} does not hash to its name"
    return names


def catalog_digests(vault: Path) -> list[str]:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return [row[0] for row in db.execute("SELECT sha256 FROM messages")]


def sha256s(messages: Iterable[bytes]) -> set[str]:
    return {hashlib.sha256(m).hexdigest() for m in messages}


def committed_uidls(vault: Path, account: str) -> set[str]:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return {r[0] for r in db.execute("SELECT uidl FROM uidls WHERE account=?", (account,))}


def assert_vault_exact(vault: Path, expected: set[str]) -> None:
    """Every expected message exactly once in store and catalog, nothing else, no tmp leftovers."""
    blobs = stored_digests(vault)
    assert len(blobs) == len(set(blobs)), "a message is stored twice"
    assert set(blobs) == expected
    rows = catalog_digests(vault)
    assert sorted(rows) == sorted(expected)


def no_tmp_leftovers(vault: Path) -> bool:
    return not os.listdir(vault / "tmp")
