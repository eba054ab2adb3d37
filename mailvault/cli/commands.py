"""Load every command module (for the generated docs and the tests); the CLI loads lazily."""

import importlib

from mailvault.cli import COMMAND_MODULES, MailvaultGroup

for _module in sorted(set(MailvaultGroup._available().values())):
    importlib.import_module(f"mailvault.cli.{_module}")
del _module

__all__ = ["COMMAND_MODULES"]
