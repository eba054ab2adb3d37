"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mailvault.vault import Vault, open_vault


def vault_from(ctx: click.Context) -> Vault:
    path: Path = ctx.obj["vault_path"]
    return open_vault(path)


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
