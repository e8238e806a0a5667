"""Progress for logs: plain lines at a steady interval when stderr is not a terminal; rich bars on a terminal."""

import io
import time

import pytest

from sri import progress
from sri.errors import SriError
from sri.progress import PlainProgress, metric_bar, progress_bar, progress_interval


def test_plain_lines_at_start_interval_and_end() -> None:
    stream = io.StringIO()
    plain = PlainProgress("  tracing", 10, stream=stream, interval=0.05)
    plain.start()
    plain.advance(4)
    time.sleep(0.3)
    plain.advance(6)
    plain.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 4  # start, a few interval lines, end
    assert lines[0].startswith("tracing: 0/10 (0%), 0/s, elapsed 0:00:00, ETA ?")
    assert any(line.startswith("tracing: 4/10 (40%), ") for line in lines[1:-1])
    assert lines[-1].startswith("tracing: 10/10 (100%), ") and lines[-1].endswith("ETA 0:00:00")
    assert "/s, elapsed " in lines[-1]


def test_progress_bar_writes_plain_lines_when_not_a_terminal(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SRI_PROGRESS_INTERVAL", "0.05")
    assert not progress.console.is_terminal  # captured stderr is no terminal
    with progress_bar("   LLM judge", total=3) as advance:
        for _ in range(3):
            time.sleep(0.08)
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("LLM judge: 0/3 (0%)")
    assert len(lines) >= 4 and lines[-1].startswith("LLM judge: 3/3 (100%), ")
    assert all("ETA" in line and "elapsed" in line for line in lines)


def test_metric_bar_shows_the_metric_and_counts_only_new_work(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SRI_PROGRESS_INTERVAL", "0.05")
    with metric_bar("training", 100, metric="loss", done=50) as update:
        time.sleep(0.12)
        update(60, 1.23456)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("training: 50/100 (50%), 0/s, loss –")
    assert lines[-1].startswith("training: 60/100 (60%), ") and "loss 1.235" in lines[-1]


def test_disabled_is_silent(capsys) -> None:
    with progress_bar("x", 2, enabled=False) as advance:
        advance(2)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("value", "seconds"), [(None, 30.0), ("", 30.0), ("5", 5.0), ("0.5", 0.5), ("0", None),
                                                ("x", None)])
def test_interval_from_environment(monkeypatch, value, seconds) -> None:
    if value is None:
        monkeypatch.delenv("SRI_PROGRESS_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("SRI_PROGRESS_INTERVAL", value)
    if seconds is None:  # set, but not a positive number of seconds: refused, not silently replaced
        with pytest.raises(SriError, match="set it to a positive number of seconds"):
            progress_interval()
    else:
        assert progress_interval() == seconds
