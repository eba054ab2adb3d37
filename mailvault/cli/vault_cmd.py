"""`mailvault init`."""

from __future__ import annotations

import click

from mailvault.cli import cli
from mailvault.cli._common import vault_path
from mailvault.vault import init_vault


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create a new vault (directory 0700, config, object store, catalog, empty index).

    Example: mailvault --vault ~/archive init
    """
    vault = init_vault(vault_path(ctx))
    click.echo(
        f"vault ready at {vault.root} (id {vault.vault_id}); edit {vault.config_path} to add accounts"
    )
