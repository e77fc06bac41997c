"""When to try an upload again: exponential backoff with full jitter, and ``Retry-After``.

Full jitter (a uniform pick between zero and the exponential ceiling) spreads the retries of
many collectors that failed together, so a recovering receiver is not hit by all of them at
the same instant. The ceiling never passes the collection interval: waiting longer than that
is what the next cycle is for. A receiver's ``Retry-After`` is a floor, within that ceiling.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_after_seconds(
    value: float | str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date (RFC 9110).

    Anything unreadable is ignored rather than trusted; a date in the past means now.
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value))
    text = value.strip()
    # isdigit() alone also takes digits such as "²" that float() refuses.
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now()).total_seconds())


class Backoff:
    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
        ceiling = min(self.cap, self.base * 2 ** max(0, failures - 1))
        delay = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.cap)


class StopSignal:
    """Shared between a running collector and whoever may ask it to stop (a signal handler,
    the service shutting down). Asking sets a deadline the current and final cycles respect
    and wakes any wait in progress.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._event = threading.Event()
        self.deadline: float | None = None

    def request(self, within: float) -> None:
        if self.deadline is None:
            self.deadline = self._clock() + within
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def expired(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a stop is asked for meanwhile."""
        if self._event.is_set():
            time.sleep(max(0.0, seconds))
        else:
            self._event.wait(max(0.0, seconds))
