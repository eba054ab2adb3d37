"""Locate the files under the repository's top-level ``schemas/`` directory.

The SQL schema and the JSON Schemas are data shared by code, tests and docs, so they live in one
place at the top of the repository rather than inside the package.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel has its copy in the package; a source checkout has the repository's.
SCHEMAS_DIR = (
    _PACKAGE / "_schemas" if (_PACKAGE / "_schemas").is_dir() else _PACKAGE.parent / "schemas"
)


def schema_path(name: str) -> Path:
    """Path of a file in ``schemas/``."""
    return SCHEMAS_DIR / name


@cache
def json_schema(name: str) -> dict[str, Any]:
    """Load a JSON Schema by file name, cached for the process."""
    loaded: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return loaded
