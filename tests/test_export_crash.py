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
