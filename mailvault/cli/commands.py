"""Import every command module so that each registers itself on the group."""

from mailvault.cli import fetch_cmd, vault_cmd, verify_cmd  # noqa: F401
