"""An export killed at an awkward instant, rerun, or run twice at once: nothing lost, nothing
duplicated.

Kills are simulated by small scripts run as subprocesses that patch one step of the export to
end the process with ``os._exit`` (SIGKILL-like: no handler, no clean-up) right there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_export_kit import (
    add_messages,
    cli,
    cli_json,
    new_vault,
    read_stdlib_mbox,
    sha,
)

# argv: vault, a "ready" file to create and a "go" file to wait for before the target's
# close(), then the export arguments.
_PAUSED = """
import os, sys, time
from pathlib import Path
from mailvault.export import eml, maildir, mbox
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
for cls in (eml.EmlTarget, maildir.MaildirTarget, mbox.MboxTarget):
    def paused(self, _close=cls.close):
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
        _close(self)
    cls.close = paused
from mailvault.cli import main
sys.argv = ["mailvault", "--vault", sys.argv[1], "export", *sys.argv[4:]]
main()
"""


@pytest.mark.parametrize("fmt", ["maildir", "eml", "mbox"])
def test_a_second_export_into_the_same_target_fails_at_once(
    tmp_path: Path, crafted: list[bytes], fmt: str
) -> None:
    """Two exports into one target at the same time would each write every message: the second
    is refused at once, naming the first, which then completes alone."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:6])
    out = tmp_path / "out"
    ready, go = tmp_path / "ready", tmp_path / "go"
    args = ["--format", fmt, "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, str(root), str(ready), str(go), *args],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists()
        second = cli(root, "export", *args)
        go.touch()
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert second.exit_code == 3, second.output
    assert second.stderr.count("\n") == 1
    assert f"pid {first.pid}" in second.stderr and "choose another --out" in second.stderr
    if fmt == "maildir":
        assert len(os.listdir(out / "cur")) == 6
    elif fmt == "eml":
        assert len(list(out.glob("*.eml"))) == 6
    else:
        assert len(read_stdlib_mbox(out)) == 6
    # The lock is gone with its holder: the next export goes ahead.
    if fmt != "mbox":
        code, summary = cli_json(root, "export", *args)
        assert (code, summary["added"], summary["skipped"]) == (0, 0, 6)


# argv: vault, then the export arguments; dies (like SIGKILL) once the first batch of files is
# in place, before the manifest.
_KILLED_AFTER_A_BATCH = """
import os, sys
from mailvault.export import _target
_target.BATCH_MESSAGES = 2
finish = _target.DirBatch._finish
def finish_then_die(self, batch):
    finish(self, batch)
    os._exit(9)
_target.DirBatch._finish = finish_then_die
from mailvault.cli import main
sys.argv = ["mailvault", "--vault", sys.argv[1], "export", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_a_rerun_with_other_line_endings_is_refused_not_mixed(
    tmp_path: Path, crafted: list[bytes], fmt: str
) -> None:
    """An export killed before its manifest leaves files but nothing that says which line
    endings they have.  A rerun with the other --line-endings used to find each of them
    "changed after export" and write a second copy of every one (Maildir).  Now it sees the
    files are the other form of the same messages and refuses, naming the form to use, before
    writing anything; rerun with that form, it completes with each message once."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:8])
    out = tmp_path / "out"
    args = ["--format", fmt, "--out", str(out)]
    killed = [sys.executable, "-c", _KILLED_AFTER_A_BATCH, str(root), *args]
    proc = subprocess.run([*killed, "--line-endings", "crlf"], capture_output=True)
    assert proc.returncode == 9, proc.stderr

    def files() -> list[Path]:
        return sorted((out / "cur").iterdir()) if fmt == "maildir" else sorted(out.glob("*.eml"))

    left = {p: p.read_bytes() for p in files()}
    assert 0 < len(left) < 8 and not (out / "manifest.json").exists()
    result = cli(root, "export", *args, "--line-endings", "lf")
    assert result.exit_code == 3 and result.stderr.count("\n") == 1, result.output
    assert "--line-endings crlf" in result.stderr and "new or empty directory" in result.stderr
    assert {p: p.read_bytes() for p in files()} == left
    code, summary = cli_json(root, "export", *args, "--line-endings", "crlf")
    assert (code, summary["added"], summary["skipped"]) == (0, 8 - len(left), len(left))
    assert summary["warnings"] == [] and len(files()) == 8
    assert sorted(sha(p.read_bytes()) for p in files()) == sorted(sha(m) for m in crafted[:8])
