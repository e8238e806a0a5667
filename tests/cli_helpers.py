"""Run the ``sri`` command line in-process and capture its exit code and output."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from sri.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    old = sys.argv
    sys.argv = ["sri", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_one_line_error(res: CliResult, match: str = "", code: int = 2) -> None:
    """The CLI's promise for bad input: exit ``code``, exactly one error line containing ``match``, no traceback."""
    assert res.code == code, res.err
    assert len(res.error_lines) == 1, res.err
    assert "Traceback" not in res.err + res.out
    assert match in res.err, res.err
