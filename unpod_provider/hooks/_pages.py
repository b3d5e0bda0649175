"""Fetching the pages of a list, sequentially or a few at a time, always yielding in API order.

The rules of what to fetch and when to stop live in ``protocol.PageWalk``; this module only
decides how many requests are in flight. After the first page tells the total, the remaining
pages are requested concurrently (bounded), and fed back to the walk strictly in page order, so
the caller sees exactly what a sequential loop would, with one request per page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from unpod_provider.exceptions import UnpodInconsistentListError, UnpodNotFoundError
from unpod_provider.protocol import Envelope, PageWalk

#: Pages requested at once by default: the size of ``requests``' default connection pool, so the
#: concurrent fetch opens no more connections than one default ``requests.Session`` would keep.
DEFAULT_MAX_CONCURRENCY = 10


class Throttle:
    """A pause shared by every request of a hook: one 429 slows the whole fetch down."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._not_before = 0.0
        self._owner: int | None = None
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        """Hold the other threads' requests for ``seconds`` from now (extends, never shortens).

        The thread that got the 429 already waits in its own retry; it is not held twice.
        """
        with self._lock:
            until = self._clock() + max(0.0, seconds)
            if until > self._not_before:
                self._not_before = until
                self._owner = threading.get_ident()

    def remaining(self) -> float:
        """Seconds the calling thread must still hold back."""
        with self._lock:
            if self._owner == threading.get_ident():
                return 0.0
            return max(0.0, self._not_before - self._clock())

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Sleep until the shared pause (as it stands now) is over."""
        left = self.remaining()
        if left > 0:
            sleep(left)


def walk_pages(
    walk: PageWalk,
    fetch: Callable[[int, bool], Envelope],
    *,
    max_concurrency: int = 1,
    on_stop: Callable[[], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield each new item of ``walk``'s list, fetching pages with ``fetch(page, checked)``.

    ``fetch(page, True)`` retries until ``walk.check`` accepts the answer (or raises);
    ``fetch(page, False)`` is a plain fetch, for pages requested ahead of the walk. With
    ``max_concurrency`` > 1, pages 2..N (N from the first page's count) are requested
    concurrently, at most ``max_concurrency`` at once and at most ``2 * max_concurrency`` held
    in memory, then checked and fed in order. A page that disagrees with the pages before it is
    fetched again, sequentially and checked, like every page still missing afterwards (the
    total grew while reading). A 404 past the end of the list ends it, as on stricter servers.
    When the concurrent part ends (an error, the caller stops, Ctrl-C) ``on_stop`` is called and
    the pages still in flight are not waited for: ``fetch`` must make no new attempt after it.
    """
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
    page = walk.next_page()
    if page is None:
        return
    yield from walk.feed(page, fetch(page, True))
    planned_last = walk.max_pages()
    if max_concurrency > 1 and not walk.done and planned_last is not None and planned_last > walk.page:
        yield from _concurrent(
            walk, fetch, range(walk.page + 1, planned_last + 1), max_concurrency, on_stop or (lambda: None)
        )
    while (page := walk.next_page()) is not None:
        try:
            envelope = fetch(page, True)
        except UnpodNotFoundError:
            if walk.end_on_not_found(page):
                return
            raise
        yield from walk.feed(page, envelope)


def _concurrent(
    walk: PageWalk,
    fetch: Callable[[int, bool], Envelope],
    pages: range,
    max_concurrency: int,
    on_stop: Callable[[], None],
) -> Iterator[dict[str, Any]]:
    window = 2 * max_concurrency
    pending: dict[int, Future[Envelope]] = {}
    upcoming = iter(pages)
    executor = ThreadPoolExecutor(
        max_workers=min(max_concurrency, len(pages)), thread_name_prefix="unpod-page"
    )
    failed = False
    try:

        def top_up() -> None:
            while len(pending) < window:
                nxt = next(upcoming, None)
                if nxt is None:
                    return
                pending[nxt] = executor.submit(fetch, nxt, False)

        top_up()
        for page in pages:
            future = pending.pop(page)
            try:
                envelope = future.result()
            except UnpodNotFoundError:
                if walk.end_on_not_found(page):
                    return
                raise
            try:
                walk.check(page, envelope)
            except UnpodInconsistentListError:
                # Served out of order around a change of the list (page n before items arrived
                # at the head, page n - 1 after), or a bad answer: read on sequentially from this
                # page, each answer checked and retried, so nothing is skipped.
                return
            yield from walk.feed(page, envelope)
            if walk.done:
                return
            top_up()
    except BaseException:
        # An error, the caller gone, Ctrl-C: the siblings stop at their next attempt and are not
        # waited for (one may be in a retry wait, or in a request bounded by its deadline).
        failed = True
        on_stop()
        raise
    finally:
        for future in pending.values():
            future.cancel()
        executor.shutdown(wait=not failed, cancel_futures=True)
