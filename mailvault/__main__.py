"""`python -m mailvault` runs the CLI."""

from mailvault.cli import main

main()
