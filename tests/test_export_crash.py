"""An export killed at an awkward instant, rerun, or run twice at once: nothing lost, nothing
duplicated.

Kills are simulated by small scripts run as subprocesses that patch one step of the export to
end the process with ``os._exit`` (SIGKILL-like: no handler, no clean-up) right there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_export_kit import (
    add_messages,
    cli,
    cli_json,
    manifest_lines,
    new_vault,
    read_stdlib_mbox,
    sha,
    unquote_mboxrd,
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


# argv: vault, where to die, then the export arguments.  "linked": right after the new mbox
# is linked into place; "replace:SUFFIX": instead of renaming a file ending in SUFFIX into
# place (the manifest files); "finished": instead of removing the journal, the last step.
_KILLED_AT = """
import os, sys
from mailvault.export import mbox
point = sys.argv[2]
if point.startswith("replace:"):
    replace = os.replace
    def replace_or_die(src, dst, *args, **kwargs):
        if str(dst).endswith(point[len("replace:"):]):
            os._exit(9)
        return replace(src, dst, *args, **kwargs)
    os.replace = replace_or_die
elif point == "linked":
    link = mbox.MboxTarget._link_into_place
    def link_then_die(self, tmp):
        link(self, tmp)
        os._exit(9)
    mbox.MboxTarget._link_into_place = link_then_die
else:
    mbox.MboxTarget.finished = lambda self: os._exit(9)
from mailvault.cli import main
sys.argv = ["mailvault", "--vault", sys.argv[1], "export", *sys.argv[3:]]
main()
"""
_POINTS = ["linked", "replace:.manifest.jsonl", "replace:.manifest.json", "finished"]


def _kill(root: Path, point: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_AT, str(root), point, *args], capture_output=True
    )
    assert proc.returncode == 9, proc.stderr


def _check_mbox(out: Path, messages: list[bytes]) -> None:
    """The mbox holds exactly these messages once each, and its manifest says where."""
    assert sorted(unquote_mboxrd(m) for m in read_stdlib_mbox(out)) == sorted(
        m.replace(b"\r\n", b"\n") + (b"" if m.endswith(b"\n") else b"\n") for m in messages
    )
    entries = manifest_lines(Path(f"{out}.manifest.jsonl"))
    assert sorted(e["sha256"] for e in entries) == sorted(sha(m) for m in messages)
    data = out.read_bytes()
    for entry in entries:
        cut = data[entry["offset"] : entry["offset"] + entry["length"]]
        assert sha(unquote_mboxrd(cut)) == entry["exported_sha256"]
    assert not list(out.parent.glob(f".{out.name}.append-journal-*"))
    assert not list(out.parent.glob(f"{out.name}.interrupted-*"))


@pytest.mark.parametrize("point", _POINTS)
def test_a_new_mbox_killed_once_in_place_is_finished_by_the_rerun(
    tmp_path: Path, crafted: list[bytes], point: str
) -> None:
    """Killed after the new mbox was linked into place but before its manifest was (or before
    the export ended): the rerun used to refuse ("already exists; pass --append"), and
    following that advice wrote every message a second time.  Now the rerun recognises the
    mbox its own run placed, finishes the manifest, and writes no message again; --append
    right after such a crash does the same."""
    plain = [m for m in crafted if len(m) < 100_000][:8]
    for append in (False, True):
        root = new_vault(tmp_path / f"vault{append}")
        add_messages(root, plain)
        out = tmp_path / f"box{append}.mbox"
        args = ["--format", "mbox", "--out", str(out)]
        _kill(root, point, *args)
        placed = out.read_bytes()
        rerun = [*args, "--append"] if append else args
        code, summary = cli_json(root, "export", *rerun)
        assert code == 0, summary
        assert out.read_bytes() == placed
        _check_mbox(out, plain)
        assert summary["count"] == len(plain) and summary["added"] == 0
        # Once finished, exporting the same again writes nothing (the mbox is that export's),
        # and another selection is refused, without sending the user to --append (which adds
        # every selected message after those already there).
        code, summary = cli_json(root, "export", *args)
        assert (code, summary["added"]) == (0, 0) and out.read_bytes() == placed
        add_messages(root, [b"Subject: another\r\n\r\nanother selection\r\n"])
        result = cli(root, "export", *args)
        assert result.exit_code == 3 and result.stderr.count("\n") == 1
        assert "already exists" in result.stderr and "pass --append" not in result.stderr


def _exported_then_more(tmp_path: Path, plain: list[bytes]) -> tuple[Path, Path, list[str]]:
    """A vault whose first 3 messages were exported into a new mbox, with 5 more since: (the
    vault, the mbox, the export's arguments), ready for an --append."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, plain[:3])
    out = tmp_path / "box.mbox"
    args = ["--format", "mbox", "--out", str(out)]
    assert cli(root, "export", *args).exit_code == 0
    add_messages(root, plain[3:8])
    return root, out, args


@pytest.mark.parametrize("point", ["replace:.manifest.jsonl", "replace:.manifest.json", "finished"])
def test_an_append_killed_after_it_finished_is_not_appended_again(
    tmp_path: Path, crafted: list[bytes], point: str
) -> None:
    """Killed after every appended byte was durable and the run was committed, but before its
    manifest was in place or its journal removed: the rerun used to append everything again
    (or set the finished run aside and append it again).  Now it recognises the finished
    append by its journal (where it started and ended, the bytes before both, what it
    selected), puts its manifest in place and appends nothing."""
    plain = [m for m in crafted if len(m) < 100_000]
    root, out, args = _exported_then_more(tmp_path, plain)
    _kill(root, point, *args, "--append")
    appended = out.read_bytes()
    code, summary = cli_json(root, "export", *args, "--append")
    assert code == 0, summary
    assert out.read_bytes() == appended
    _check_mbox(out, plain[:3] + plain[:8])
    assert summary["added"] == 0 and "already finished" in summary["warnings"][0]
    # A different selection is another export: appended as usual.
    add_messages(root, plain[8:9])
    code, summary = cli_json(root, "export", *args, "--append")
    assert code == 0 and summary["added"] == 9
    assert len(read_stdlib_mbox(out)) == 3 + 8 + 9


# argv: vault, where to die, then the export arguments.  "audit": instead of recording the
# "finished" audit entry; "reported": right after the summary is printed (the CLI's last step
# but one); both after the manifest is in place.
_KILLED_AT_THE_END = """
import os, sys
from mailvault import audit
from mailvault.cli import export_cmd
point = sys.argv[2]
if point == "audit":
    record = audit.record
    def record_or_die(*args, **kwargs):
        if kwargs.get("stage") == "finished":
            os._exit(9)
        return record(*args, **kwargs)
    audit.record = record_or_die
else:
    echo = export_cmd.click.echo
    def echo_then_die(*args, **kwargs):
        echo(*args, **kwargs)
        sys.stdout.flush()
        if not kwargs.get("err"):
            os._exit(9)
    export_cmd.click.echo = echo_then_die
from mailvault.cli import main
sys.argv = ["mailvault", "--vault", sys.argv[1], "export", *sys.argv[3:]]
main()
"""


def _kill_at_the_end(root: Path, point: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_THE_END, str(root), point, *args], capture_output=True
    )
    assert proc.returncode == 9, proc.stderr


def _export_audit(root: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(root / "catalog.sqlite") as db:
        rows = db.execute("SELECT detail FROM audit WHERE command = 'export' ORDER BY seq")
        return [json.loads(detail) for (detail,) in rows]


@pytest.mark.parametrize("point", ["audit", "reported"])
@pytest.mark.parametrize("append", [False, True])
def test_an_mbox_export_killed_before_it_reported_is_finished_not_repeated(
    tmp_path: Path, crafted: list[bytes], point: str, append: bool
) -> None:
    """Killed once the manifest was in place but before the "finished" audit entry (or before
    the summary was printed): the journal used to be gone already, so the rerun of an append
    appended every message again, and the rerun of a new mbox was refused ("already exists"),
    leaving the audit log with a "started" only.  Now the journal stays until the summary is
    out: the rerun writes nothing, exits 0 and records the export as finished (recovered)."""
    plain = [m for m in crafted if len(m) < 100_000]
    root = new_vault(tmp_path / "vault")
    add_messages(root, plain[:3])
    out = tmp_path / "box.mbox"
    args = ["--format", "mbox", "--out", str(out)]
    if append:
        assert cli(root, "export", *args).exit_code == 0
        add_messages(root, plain[3:8])
        args.append("--append")
    _kill_at_the_end(root, point, *args)
    written = out.read_bytes()
    code, summary = cli_json(root, "export", *args)
    assert code == 0, summary
    assert out.read_bytes() == written
    _check_mbox(out, plain[:3] + plain[:8] if append else plain[:3])
    assert summary["added"] == 0 and "already finished" in summary["warnings"][0]
    last = _export_audit(root)[-1]
    assert last["stage"] == "finished" and last["recovered"] == summary["run"]
    assert last["manifest_sha256"] == sha(Path(f"{out}.manifest.json").read_bytes())


@pytest.mark.parametrize("point", ["audit", "reported"])
@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_a_directory_export_killed_before_it_reported_is_completed_by_the_rerun(
    tmp_path: Path, crafted: list[bytes], point: str, fmt: str
) -> None:
    """The same window for Maildir and EML: files and manifest in place, the "finished" audit
    entry not written (or the summary not printed).  The rerun writes no file again, and the
    audit log ends with its "finished" entry, naming the manifest in place."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:6])
    out = tmp_path / "out"
    args = ["--format", fmt, "--out", str(out)]
    _kill_at_the_end(root, point, *args)

    def messages() -> dict[str, bytes]:
        found = (out / "cur").iterdir() if fmt == "maildir" else out.glob("*.eml")
        return {p.name: p.read_bytes() for p in found}

    files = messages()
    assert len(files) == 6 and (out / "manifest.json").exists()
    code, summary = cli_json(root, "export", *args)
    assert (code, summary["added"], summary["skipped"]) == (0, 0, 6), summary
    assert messages() == files
    stages = [entry["stage"] for entry in _export_audit(root)]
    killed = ["started"] if point == "audit" else ["started", "finished"]
    assert stages == [*killed, "started", "finished"]
    last = _export_audit(root)[-1]
    assert last["manifest_sha256"] == sha((out / "manifest.json").read_bytes())


def _files(out: Path) -> dict[str, bytes]:
    """The mbox and its manifest files, by name."""
    return {p.name: p.read_bytes() for p in out.parent.glob(f"{out.name}*")}


def test_the_same_append_again_appends_nothing(tmp_path: Path, crafted: list[bytes]) -> None:
    """An export --append that finished (journal removed) and is run again with the same
    selection used to append every message a second time: what a cron job rerunning an
    export killed after its last step would do, since a kill then leaves no trace.  Now the
    manifest records what the last run wrote, and while the mbox still ends there the same
    export appends nothing (exit 0, a warning naming that run).  A different selection, or
    an mbox another program appended to since, is appended to as before."""
    plain = [m for m in crafted if len(m) < 100_000]
    root, out, args = _exported_then_more(tmp_path, plain)
    code, first = cli_json(root, "export", *args, "--append")
    assert code == 0 and first["added"] == 8
    before = _files(out)
    code, again = cli_json(root, "export", *args, "--append")
    assert (code, again["count"], again["added"], again["skipped"]) == (0, 8, 0, 8), again
    assert "last thing exported" in again["warnings"][0] and first["run"] in again["warnings"][0]
    assert _files(out) == before
    _check_mbox(out, plain[:3] + plain[:8])
    last = _export_audit(root)[-1]
    assert (last["stage"], last["added"], last["repeat_of"]) == ("finished", 0, first["run"])
    # Another program appended a message since: the mbox no longer ends with that run.
    with out.open("ab") as f:
        f.write(b"From x@y Mon Jan  1 00:00:00 2024\nSubject: by hand\n\nbody\n\n")
    code, summary = cli_json(root, "export", *args, "--append")
    assert code == 0 and summary["added"] == 8 and len(read_stdlib_mbox(out)) == 3 + 8 + 1 + 8
    # A different selection is another export: appended as usual.
    add_messages(root, plain[8:9])
    code, summary = cli_json(root, "export", *args, "--append")
    assert code == 0 and summary["added"] == 9 and len(read_stdlib_mbox(out)) == 20 + 9


def test_the_same_new_mbox_export_again_writes_nothing(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """Exporting into an mbox that exists used to be refused even when it is this very
    export's, finished: a rerun after a kill past the journal's removal failed, and a retry
    wrapper had nothing to do but fail too.  Now, if the manifest says one export of the same
    selection wrote the whole file, and the file still ends where it did, the export exits 0
    writing nothing.  Another selection, or an mbox changed since, is refused as before."""
    plain = [m for m in crafted if len(m) < 100_000]
    root = new_vault(tmp_path / "vault")
    add_messages(root, plain[:5])
    out = tmp_path / "box.mbox"
    args = ["--format", "mbox", "--out", str(out)]
    code, first = cli_json(root, "export", *args)
    assert code == 0 and first["added"] == 5
    assert first["written"]["start"] == 0 and first["written"]["end"] == out.stat().st_size
    before = _files(out)
    code, again = cli_json(root, "export", *args)
    assert (code, again["count"], again["added"]) == (0, 5, 0), again
    assert "already exported" in again["warnings"][0] and first["run"] in again["warnings"][0]
    assert _files(out) == before
    _check_mbox(out, plain[:5])
    assert _export_audit(root)[-1]["repeat_of"] == first["run"]

    def refused() -> None:
        result = cli(root, "export", *args)
        assert result.exit_code == 3 and result.stderr.count("\n") == 1, result.output
        assert "already exists" in result.stderr

    with out.open("ab") as f:  # the same selection, but the mbox changed since
        f.write(b"From x@y Mon Jan  1 00:00:00 2024\nSubject: by hand\n\nbody\n\n")
    refused()
    out.write_bytes(before[out.name])
    add_messages(root, plain[5:6])  # another selection
    refused()
    assert _files(out) == before


def test_a_new_mbox_removes_only_journals_of_files_no_longer_there(
    tmp_path: Path, crafted: list[bytes]
) -> None:
    """A journal is named by its mbox's device and inode; one left for a file that is gone
    (deleted, or the temp file of a new mbox killed before it was linked) could be taken by
    a later mbox given that inode for its own.  A new export into that name removes those,
    and leaves other mboxes' journals alone."""
    root = new_vault(tmp_path / "vault")
    add_messages(root, crafted[:3])
    out = tmp_path / "box.mbox"
    stale = [
        tmp_path / ".box.mbox.append-journal-1-2",
        tmp_path / ".box.mbox.append-journal-1-2.new",
    ]
    kept = [tmp_path / ".other.mbox.append-journal-1-2", tmp_path / ".box.mbox.append-journal-x"]
    for path in stale + kept:
        path.write_text("{}\n")
    assert cli(root, "export", "--format", "mbox", "--out", str(out)).exit_code == 0
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    assert len(read_stdlib_mbox(out)) == 3


# argv: vault, where to die, then the export arguments.  After the mbox's journal is removed,
# the export's last step: "removed" right then, "unlocked" once the target's lock is released,
# "closed" once the catalog is closed, "exit" when main() returns (its exit status printed).
_KILLED_PAST_THE_JOURNAL = """
import os, sys
from mailvault.catalog import Catalog
from mailvault.export import _target, mbox
point = sys.argv[2]
finished, unlock, close = mbox.MboxTarget.finished, _target.Target.unlock, Catalog.close
gone = []
def finished_then(self):
    finished(self)
    gone.append(1)
    if point == "removed":
        os._exit(9)
def unlock_then(self):
    unlock(self)
    if gone and point == "unlocked":
        os._exit(9)
def close_then(self):
    close(self)
    if gone and point == "closed":
        os._exit(9)
mbox.MboxTarget.finished, _target.Target.unlock, Catalog.close = finished_then, unlock_then, close_then
from mailvault.cli import main
sys.argv = ["mailvault", "--vault", sys.argv[1], "export", *sys.argv[3:]]
try:
    main()
finally:
    os._exit(9)
"""


def _kill_anywhere(root: Path, point: str, *args: str) -> None:
    if point in ("audit", "reported"):
        _kill_at_the_end(root, point, *args)
    elif point in ("removed", "unlocked", "closed", "exit"):
        proc = subprocess.run(
            [sys.executable, "-c", _KILLED_PAST_THE_JOURNAL, str(root), point, *args],
            capture_output=True,
        )
        assert proc.returncode == 9, proc.stderr
    else:
        _kill(root, point, *args)


_END = [*_POINTS, "audit", "reported", "removed", "unlocked", "closed", "exit"]


@pytest.mark.parametrize(
    ("mode", "point"),
    [
        (mode, point)
        for mode in ("new", "append", "cron")
        for point in _END
        if not (mode == "append" and point == "linked")  # an append links nothing
    ],
)
def test_an_mbox_export_killed_at_any_step_of_its_end_is_not_repeated_by_reruns(
    tmp_path: Path, crafted: list[bytes], mode: str, point: str
) -> None:
    """Killed (SIGKILL) at each step from its commit to the process's exit, including after
    its journal was removed, then run again twice the same way (a wrapper that sees exit 137
    and retries): each message is in the mbox exactly once, the reruns exit 0 and write
    nothing.  After the journal's removal the rerun of an append used to append every
    message again, and that of a new mbox was refused.  "cron" is --append into an mbox that
    does not exist yet."""
    plain = [m for m in crafted if len(m) < 100_000]
    root = new_vault(tmp_path / "vault")
    add_messages(root, plain[:3])
    out = tmp_path / "box.mbox"
    args = ["--format", "mbox", "--out", str(out)]
    expected = plain[:3]
    if mode == "append":
        assert cli(root, "export", *args).exit_code == 0
        add_messages(root, plain[3:8])
        expected = plain[:3] + plain[:8]
    if mode != "new":
        args.append("--append")
    _kill_anywhere(root, point, *args)
    written = out.read_bytes()
    for _ in range(2):
        code, summary = cli_json(root, "export", *args)
        assert (code, summary["added"]) == (0, 0), summary
        assert out.read_bytes() == written
        _check_mbox(out, expected)
