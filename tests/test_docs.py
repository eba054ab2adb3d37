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
