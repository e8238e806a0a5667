"""The ``sri`` command line: thin wrappers that parse, call the library and print with rich.

One module per area registers its commands on the shared :data:`app`.
"""

from __future__ import annotations

import sys

from ..errors import SriError
from . import analysis, core, dlm, guard, pipeline  # noqa: F401  (registers commands)
from .app import app, err

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: user errors become one red line and exit code 2."""
    try:
        app()
    except SriError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/] — completed shards are kept; re-run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
