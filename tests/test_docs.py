"""The CLI reference in docs/cli.md is generated from the code and must be current."""

from __future__ import annotations

from pathlib import Path

from mailvault.cli._docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), (
        "docs/cli.md is stale: run `python -m mailvault.cli._docs > docs/cli.md`"
    )


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme


def test_readme_exit_codes_are_the_cli_reference_s() -> None:
    """README.md and docs/cli.md give one exit-code table (they drifted apart once)."""

    def table(text: str) -> str:
        return text[text.index("| code | meaning |") : text.index("| 143 | terminated by SIGTERM")]

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert table(readme) == table(reference)


def test_a_crash_of_pytest_names_the_test_and_its_frames(tmp_path: Path) -> None:
    """`make test` reports a crash of pytest itself (a native library's SIGSEGV or SIGBUS)
    through tests/conftest.py: the running test's id and every thread's traceback in
    MAILVAULT_TEST_CRASH_DIR, which the Makefile prints last (CI's log kept only the tail of
    a SIGBUS dump, with neither the test nor the frame)."""
    import os
    import resource
    import subprocess
    import sys

    crashing = tmp_path / "test_crashing.py"
    crashing.write_text("import ctypes\n\ndef test_native_crash():\n    ctypes.string_at(0)\n")
    where = tmp_path / "crash"
    where.mkdir()
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:faulthandler",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            str(crashing),
        ],
        cwd=tmp_path,
        env={**os.environ, "MAILVAULT_TEST_CRASH_DIR": str(where), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),  # no core file
    )
    assert result.returncode < 0, result
    assert (where / "running").read_text() == "test_crashing.py::test_native_crash\n"
    traceback = (where / "traceback").read_text()
    assert "Current thread" in traceback and 'test_crashing.py", line 4 in test_native_crash' in (
        traceback
    )
    makefile = (root / "Makefile").read_text()
    assert "MAILVAULT_TEST_CRASH_DIR=$(CRASH_DIR)" in makefile and "-p no:faulthandler" in makefile
