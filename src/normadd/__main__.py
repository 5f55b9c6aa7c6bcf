"""``python -m normadd`` runs the CLI."""

from normadd.cli import main

main()
