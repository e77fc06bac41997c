"""Retry timing, stop requests, the lock and the terminal progress line."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lightspeed_collector.collector.backoff import Backoff, StopSignal, retry_after_seconds
from lightspeed_collector.collector.lock import CollectorLock
from lightspeed_collector.collector.progress import TerminalProgress, for_stream

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (7, 7.0),
        (2.5, 2.5),
        ("120", 120.0),
        (" 3 ", 3.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("", None),
        ("\u00b2", None),  # a digit to str.isdigit(), not to float()
        ("Mon, 01 Jan 9999999999 00:00:00 GMT", None),  # a year datetime cannot hold
    ],
)
def test_retry_after_takes_seconds_or_an_http_date(value: object, expected: float | None) -> None:
    assert retry_after_seconds(value, now=lambda: NOW) == expected  # type: ignore[arg-type]


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(3))
    for failures in range(1, 10):
        ceiling = min(60.0, 2.0 ** (failures - 1))
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        # Spread over the whole range, not bunched at the top.
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_retry_after_is_a_floor_and_the_interval_a_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(1))
    assert all(backoff.delay(1, retry_after=5.0) >= 5.0 for _ in range(50))
    assert backoff.delay(1, retry_after=1000.0) == 30.0
    assert backoff.delay(50) <= 30.0


def test_a_stop_request_sets_a_deadline_and_wakes_a_wait() -> None:
    stop = StopSignal()
    started = time.monotonic()
    threading.Timer(0.1, stop.request, args=(5.0,)).start()
    stop.wait(10)
    assert time.monotonic() - started < 2
    assert stop.requested and not stop.expired()
    assert stop.deadline is not None and 4 < stop.deadline - time.monotonic() <= 5
    stop.request(100)  # a second request does not push the deadline back
    assert stop.deadline - time.monotonic() <= 5


def test_after_a_stop_waits_still_wait() -> None:
    """Otherwise a retry loop after a stop request would spin without pausing."""
    stop = StopSignal()
    stop.request(5)
    started = time.monotonic()
    stop.wait(0.2)
    assert time.monotonic() - started >= 0.19


def test_the_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    first = CollectorLock(tmp_path)
    second = CollectorLock(tmp_path)
    with first.hold(0) as held:
        assert held
        with second.hold(0.2) as also:
            assert not also
    with second.hold(0) as held_now:
        assert held_now


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from lightspeed_collector.collector.lock import CollectorLock\n"
            f"with CollectorLock(Path({str(tmp_path)!r})).hold(0) as held:\n"
            "    print(held, flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
            with CollectorLock(tmp_path).hold(0) as held:
                assert not held
        finally:
            holder.kill()
    with CollectorLock(tmp_path).hold(1) as held:
        assert held


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_stays_quiet_for_short_runs_and_shows_long_ones() -> None:
    now = [0.0]
    terminal = FakeTerminal()
    progress = TerminalProgress(terminal, clock=lambda: now[0])
    progress.packed(10, 1000)
    assert terminal.getvalue() == ""
    now[0] = 1.5
    progress.packed(5000, 7_000_000)
    now[0] = 1.6
    progress.packed(5001, 7_000_100)  # throttled
    now[0] = 2.0
    progress.uploaded(1, 2)
    progress.uploaded(2, 2)  # the last one always shows
    progress.done()
    output = terminal.getvalue()
    assert "packing: 5000 records" in output and "5001" not in output
    assert "uploading: 2 of 2 archives sent" in output
    assert output.endswith("\n")


def test_progress_only_on_a_terminal() -> None:
    assert for_stream(io.StringIO()) is None
    assert isinstance(for_stream(FakeTerminal()), TerminalProgress)


def test_retry_after_dates_far_ahead_are_just_large() -> None:
    later = NOW + timedelta(hours=3)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds(header, now=lambda: NOW) == 3 * 3600
