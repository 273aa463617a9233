"""The progress reporter of sampling and evaluation: lines in logs, a bar in a terminal."""

import io
import logging

import pytest

from jaxdiff.core.progress import Progress, duration


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_duration_is_hours_minutes_seconds():
    assert duration(0) == "0:00:00"
    assert duration(59.6) == "0:01:00"
    assert duration(3 * 3600 + 25 * 60 + 7) == "3:25:07"
    assert duration(-5) == "0:00:00"


def test_plain_lines_give_rate_and_time_left_without_the_first_call(caplog):
    clock = FakeClock()
    progress = Progress(1000, "samples", "sample", clock=clock, terminal=False, enabled=True)
    with caplog.at_level(logging.INFO, logger="jaxdiff"):
        clock.now = 40.0  # The first batch, compilation included: no rate from it.
        progress.update(100)
        clock.now = 45.0  # 5 s after the last line: too soon for another.
        progress.update(200)
        clock.now = 60.0  # 300 samples in the 20 s since the first batch: 15/s.
        progress.update(400)
        clock.now = 100.0
        progress.update(1000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "sample: 100/1,000 samples (10%), first batch 0:00:40 "
        "(with compilation; rate after the next)",
        # 600 left at 15/s: 40 s.
        "sample: 400/1,000 samples (40%), 15 samples/s, 0:01:00 elapsed, about 0:00:40 left",
        "sample: 1,000/1,000 samples (100%), 15 samples/s, 0:01:40 elapsed",
    ]


def test_resumed_units_count_towards_done_but_not_the_rate(caplog):
    clock = FakeClock()
    progress = Progress(
        1000, "samples", "eval", initial=600, clock=clock, terminal=False, enabled=True
    )
    with caplog.at_level(logging.INFO, logger="jaxdiff"):
        clock.now = 10.0
        progress.update(700)
        clock.now = 30.0
        progress.update(800)
    assert [r.getMessage() for r in caplog.records] == [
        "eval: 700/1,000 samples (70%), first batch 0:00:10 "
        "(with compilation; rate after the next)",
        "eval: 800/1,000 samples (80%), 5 samples/s, 0:00:30 elapsed, about 0:00:40 left",
    ]


def test_terminal_mode_redraws_one_line_and_ends_it(caplog, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    clock, stream = FakeClock(), io.StringIO()
    with caplog.at_level(logging.INFO, logger="jaxdiff"):
        with Progress(1000, "samples", "sample", clock=clock, stream=stream, enabled=True) as p:
            assert not p.terminal  # A StringIO is no tty: plain lines unless told.
        with Progress(
            1000, "samples", "sample", clock=clock, stream=stream, terminal=True, enabled=True
        ) as progress:
            clock.now = 10.0
            progress.update(500)
            clock.now = 15.0
            progress.update(1000)
    assert not caplog.records  # The bar replaces the log lines.
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    first, second = text.removeprefix("\r").removesuffix("\n").split("\r")
    assert first.startswith("sample [##########..........] 500/1,000  1st batch 0:00:10")
    assert second.startswith("sample [####################] 1,000/1,000  100 samples/s  0:00:15")
    assert len(second) >= len(first)  # Padded over the longer line before it.

    # Cut to a narrow terminal's width: a wrapped line could not be redrawn.
    monkeypatch.setenv("COLUMNS", "40")
    stream = io.StringIO()
    narrow = Progress(1000, label="sample", clock=clock, stream=stream, terminal=True, enabled=True)
    narrow.update(1)
    assert stream.getvalue() == "\r" + "sample [....................] 1/1,000  1s"[:39]


def test_an_interrupted_bar_is_ended_by_close():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(10, clock=clock, stream=stream, terminal=True, enabled=True)
    with pytest.raises(KeyboardInterrupt), progress:
        progress.update(3)
        raise KeyboardInterrupt
    assert stream.getvalue().startswith("\r[######") and stream.getvalue().endswith("\n")


def test_only_the_enabled_process_reports(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="jaxdiff"):
        Progress(10, stream=stream, terminal=False, enabled=False).update(10)
        Progress(10, stream=stream, terminal=True, enabled=False).update(10)
    assert not caplog.records and not stream.getvalue()
