"""The shared retry policy as tenacity arguments, for the sync hook and the async client alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unpod_provider.protocol import RetryPolicy


def tenacity_kwargs(
    policy: RetryPolicy,
    log: Any,
    describe: str,
    retryable: Callable[[BaseException], bool] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying``/``AsyncRetrying`` following ``policy``.

    ``describe`` names the request in the retry log line (never the token: it is only in headers).
    ``retryable`` narrows what is retried (the create-run call retries far less than reads).
    """
    import tenacity

    predicate = retryable or policy.is_retryable
    planned: dict[tuple[int, int], float] = {}

    def delay(retry_state: tenacity.RetryCallState) -> float:
        """The wait after this attempt, drawn once (jitter) for both ``wait`` and ``stop``."""
        key = (id(retry_state), retry_state.attempt_number)
        if key not in planned:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            planned[key] = policy.delay(retry_state.attempt_number, error)
        return planned[key]

    def wait(retry_state: tenacity.RetryCallState) -> float:
        return delay(retry_state)

    class OutOfTime(tenacity.stop.stop_base):
        """Stop rather than start a wait that would end past ``max_total_seconds``.

        (tenacity's ``stop_after_delay`` only looks at the time already spent, so the last wait
        could overshoot the cap by up to ``max_delay`` or a whole ``Retry-After``.)
        """

        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            elapsed = retry_state.seconds_since_start or 0.0
            return elapsed + delay(retry_state) > policy.max_total_seconds

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        sleep = retry_state.upcoming_sleep
        log.warning(
            "Unpod %s failed (attempt %d of %d): %s; retrying in %.1fs",
            describe,
            retry_state.attempt_number,
            policy.max_attempts,
            error,
            sleep,
        )

    return {
        "stop": tenacity.stop_after_attempt(policy.max_attempts) | OutOfTime(),
        "wait": wait,
        "retry": tenacity.retry_if_exception(predicate),
        "before_sleep": before_sleep,
        "reraise": True,
    }
