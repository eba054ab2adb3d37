"""`make demo`: a throwaway Dovecot loaded with generated mail, then the real pipeline.

Everything runs through the real `mailvault` command line in subprocesses, so what the demo
prints is exactly what a user would see.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from mailvault.testkit.dovecot import Dovecot
from mailvault.testkit.generator import generate

MESSAGES = 300
USER, PASSWORD = "demo", "demo-secret"


def _run(args: list[str], env: dict[str, str], *, show: bool = True, limit: int = 25) -> str:
    print(f"\n$ mailvault {shlex.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "mailvault", *args], env=env, capture_output=True, text=True
    )
    out = done.stdout
    lines = out.splitlines()
    if show:
        for line in lines[:limit]:
            print(f"  {line}")
        if len(lines) > limit:
            print(f"  ... ({len(lines) - limit} more lines)")
    for line in done.stderr.splitlines()[:10]:
        print(f"  [stderr] {line}")
    print(f"  (exit {done.returncode})")
    if done.returncode not in (0, 1):
        raise SystemExit(f"demo step failed: mailvault {shlex.join(args)}")
    return out


def _check_with_sha256sum(maildir: Path) -> None:
    """What an auditor does without mailvault (docs/export.md): every file against the manifest."""
    lines = []
    for line in (maildir / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        lines.append(f"{entry.get('exported_sha256') or entry['sha256']}  {entry['path']}\n")
    print(
        f"\n$ sha256sum -c --quiet  # {len(lines)} manifest lines of {maildir.name}, in {maildir}"
    )
    done = subprocess.run(
        ["sha256sum", "-c", "--quiet"], input="".join(lines), cwd=maildir, text=True
    )
    print(
        f"  (exit {done.returncode}: {'every file matches' if done.returncode == 0 else 'MISMATCH'})"
    )
    if done.returncode != 0:
        raise SystemExit("demo step failed: the exported Maildir does not match its manifest")


def _sha256s(vault: Path) -> set[str]:
    catalog = sqlite3.connect(vault / "catalog.sqlite")
    try:
        return {row[0] for row in catalog.execute("SELECT sha256 FROM messages")}
    finally:
        catalog.close()


def _round_trip(base: Path, env: dict[str, str]) -> None:
    """Import the mbox export into a new vault: the same messages come back."""
    second = base / "vault-from-mbox"
    _run(["--vault", str(second), "init"], env)
    _run(["--vault", str(second), "import", str(base / "export.mbox"), "--no-index"], env)
    manifest = (base / "export.mbox.manifest.jsonl").read_text(encoding="utf-8").splitlines()
    exported = {json.loads(line)["exported_sha256"] for line in manifest}
    originals, back = _sha256s(base / "vault"), _sha256s(second)
    same = exported == back and len(back) == len(originals)
    print(
        f"  round trip: {len(originals)} messages in the vault, {len(exported)} in the mbox "
        f"(LF line ends), {len(back)} imported; the imported sha256s "
        f"{'are exactly' if same else 'DIFFER FROM'} the manifest's exported_sha256s"
    )
    if not same:
        raise SystemExit("demo step failed: the mbox round trip changed the set of messages")


def _available_commands() -> set[str]:
    from mailvault.cli import cli, commands  # noqa: F401

    return set(cli.commands)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="mailvault-demo-"))
    vault = base / "vault"
    print(f"mailvault demo in {base}")
    with Dovecot(base / "dovecot", {USER: PASSWORD}) as server:
        generated = list(generate(MESSAGES, seed=7))
        server.add_messages(USER, (m.raw for m in generated))
        print(
            f"started a private Dovecot on 127.0.0.1 (POP3S port {server.tls_port}, "
            f"STLS port {server.port}) with {MESSAGES} generated messages for user {USER!r}"
        )
        env = dict(os.environ, MAILVAULT_VAULT=str(vault), DEMO_PASSWORD=PASSWORD)
        _run(["init"], env)
        (vault / "mailvault.toml").write_text(
            "[accounts.demo]\n"
            'host = "localhost"\n'
            f"port = {server.tls_port}\n"
            'tls = "implicit"\n'
            f'user = "{USER}"\n'
            'password_env = "DEMO_PASSWORD"\n'
            f'ca_file = "{server.ca_file}"\n'
            'delete = "never"\n',
            encoding="utf-8",
        )
        print(f"\nwrote {vault / 'mailvault.toml'} for the demo account (POP3S, CA via ca_file)")
        _run(["check", "demo"], env)
        report = json.loads(_run(["fetch", "--json"], env, show=False))
        acct = report["accounts"][0]
        print(
            f"  first fetch: listed {acct['listed']}, fetched {acct['fetched']}, "
            f"duplicates {acct['duplicates']}, {acct['bytes']:,} bytes in {report['seconds']} s"
        )
        report = json.loads(_run(["fetch", "--json"], env, show=False))
        acct = report["accounts"][0]
        print(
            f"  second fetch: listed {acct['listed']}, fetched {acct['fetched']} "
            "(nothing new: committed UIDLs are never downloaded again)"
        )
        commands = _available_commands()
        if "search" in commands:
            sample = generated[42]
            subject_word = max(sample.subject.split(), key=len).strip(".,:;!?").lower()
            _run(["search", f"from:{sample.from_addr}", "--limit", "5"], env)
            _run(["search", f"subject:{subject_word}", "--limit", "5"], env)
            _run(["search", "--count", "has:attachment"], env)
            _run(["search", "--count", "date:2024-03"], env)
            ids = _run(["search", "--ids", "--limit", "1", "*"], env).split()
            if ids and "show" in commands:
                _run(["show", ids[0][:12]], env, limit=20)
        if "export" in commands:
            _run(["export", "--format", "maildir", "--out", str(base / "export-maildir")], env)
            _run(["export", "--format", "mbox", "--out", str(base / "export.mbox")], env)
            _check_with_sha256sum(base / "export-maildir")
            _round_trip(base, env)
        if "verify" in commands:
            _run(["verify"], env)
    print(
        f"\ndone. The vault stays at {vault}; try: MAILVAULT_VAULT={vault} .venv/bin/mailvault --help"
    )


if __name__ == "__main__":
    main()
