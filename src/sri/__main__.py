"""``python -m sri`` runs the command line."""

from .cli import main

main()
