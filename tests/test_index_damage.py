"""A damaged or replaced index is derived data: one-line errors, verify findings, rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import Result

from mailvault.indexer import catch_up
from mailvault.resources import json_schema
from mailvault.vault import Vault
from tests.test_index_support import build_vault, generated
from tests.vaults import run_cli


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    vault, _, _ = build_vault(tmp_path / "vault", generated(40, seed=7))
    catch_up(vault)
    return vault


def segment_file(vault: Vault, ext: str) -> Path:
    (path,) = vault.index_path.glob(f"*.{ext}")  # one segment: one commit, no merge
    return path


def damage(path: Path, *, at: float = 0.5, length: int = 64) -> None:
    """Flip bits in a file (by default in its middle), leaving its footer (which tantivy
    checks on opening) intact: what a bad disk sector or a partial restore does."""
    data = bytearray(path.read_bytes())
    start = int((len(data) - 64) * at) - length // 2
    for offset in range(start, start + length):
        data[offset] ^= 0xA5
    path.write_bytes(bytes(data))


def verify_json(vault: Vault, *args: str) -> tuple[Result, list[dict[str, str]]]:
    result = run_cli(vault.root, "verify", "--json", *args)
    report = json.loads(result.stdout)
    jsonschema.validate(report, json_schema("verify.schema.json"))
    return result, report["findings"]


def assert_one_line_damage_error(result: Result) -> None:
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mailvault: error: the search index at ")
    assert " is damaged: " in lines[0] and lines[0].endswith("run `mailvault reindex`")


def test_a_damaged_document_store_is_one_line_for_search(vault: Vault) -> None:
    damage(segment_file(vault, "store"))
    for args in (["search", "subject:*"], ["search", "--json", "*"], ["search", "--ids", "*"]):
        assert_one_line_damage_error(run_cli(vault.root, *args))


def test_a_damaged_term_dictionary_is_a_finding_and_one_line_not_a_panic(vault: Vault) -> None:
    """Damage in the id terms makes tantivy panic (pyo3's PanicException, which is no
    Exception) when they are walked: verify --quick (no checksums) reports it as a finding,
    and `hold add` (which checks the index against the catalog first) as one line."""
    damage(segment_file(vault, "term"), at=0.02)
    result, items = verify_json(vault, "--quick")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [f for f in items if f["severity"] == "error"]
    assert [f["code"] for f in errors] == ["index-damaged"], items  # garbage read before it
    assert "mailvault reindex" in errors[0]["detail"]
    result = run_cli(vault.root, "hold", "add", "h1", "subject:*")
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "the search index at " in result.stderr and " is damaged: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_damaged_document_store_is_one_line_for_holds_and_exports(
    vault: Vault, tmp_path: Path
) -> None:
    damage(segment_file(vault, "store"))
    assert_one_line_damage_error(run_cli(vault.root, "hold", "add", "h1", "subject:*"))
    out = tmp_path / "out"
    result = run_cli(vault.root, "export", "subject:*", "--format", "eml", "--out", str(out))
    assert_one_line_damage_error(result)
