"""Every `--json` document validates against its schema in schemas/ (and says which it is)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mailvault.testkit.fakepop import FakePop3Server
from tests.test_fetch_faults import PLAIN, corpus
from tests.vaults import fetch_json, make_vault, run_cli

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def validate(document: Any, name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(document, schema)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("schemas")
    with FakePop3Server(corpus(5)) as server:
        path = make_vault(root / "v", {"acct": {**PLAIN, "port": server.port}})
        code, report = fetch_json(path)
        assert code == 0
        validate(report, "fetch-report.schema.json")
        result = run_cli(path, "check", "acct", "--json")
        assert result.exit_code == 0
        validate(json.loads(result.stdout), "check.schema.json")
    toml = path / "mailvault.toml"
    toml.write_text(toml.read_text() + "[retention]\nkeep_days = 36500\n")
    return path


def lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "schema"),
    [
        (("index", "--json"), "index-report.schema.json"),
        (("reindex", "--json"), "index-report.schema.json"),
        (("show", "--json", "m2@t"), "show.schema.json"),
        (("verify", "--json"), "verify.schema.json"),
        (("ledger", "head", "--json"), "ledger-head.schema.json"),
        (("audit", "--head", "--json"), "audit-head.schema.json"),
        (("hold", "list", "--json", "--all"), "holds.schema.json"),
        (("retention", "apply", "--dry-run", "--json"), "retention.schema.json"),
    ],
)
def test_document(vault: Path, args: tuple[str, ...], schema: str) -> None:
    if args[0] == "hold":
        assert run_cli(vault, "hold", "add", "h1", "from:s1@example.com").exit_code in (0, 2)
    result = run_cli(vault, *args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    validate(document, schema)
    assert document["schema"].startswith("mailvault/")


@pytest.mark.parametrize(
    ("args", "schema"),
    [
        (("search", "--json", "*"), "search-hit.schema.json"),
        (("ledger", "export"), "ledger-entry.schema.json"),
        (("audit", "--json"), "audit-entry.schema.json"),
    ],
)
def test_json_lines(vault: Path, args: tuple[str, ...], schema: str) -> None:
    run_cli(vault, "search", "--count", "m1")  # at least one audit entry
    result = run_cli(vault, *args)
    assert result.exit_code == 0
    documents = lines(result.stdout)
    assert documents
    for document in documents:
        validate(document, schema)


def test_export_document(vault: Path, tmp_path: Path) -> None:
    result = run_cli(vault, "export", "--format", "eml", "--out", str(tmp_path / "eml"), "--json")
    assert result.exit_code == 0, result.output
    validate(json.loads(result.stdout), "export-manifest.schema.json")


def test_the_ledger_entry_schema_names_every_kind_the_ledger_writes() -> None:
    """A `mailbox-changed` entry (an account's host or user changed) failed the schema of
    `ledger export`, whose enum of kinds was not updated when the kind was added."""
    from mailvault import ledger

    schema = json.loads((SCHEMAS / "ledger-entry.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]["kind"]["enum"]) == set(ledger.KINDS)
