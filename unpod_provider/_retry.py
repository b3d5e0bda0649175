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

    def wait(retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return policy.delay(retry_state.attempt_number, error)

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
        "stop": tenacity.stop_after_attempt(policy.max_attempts)
        | tenacity.stop_after_delay(policy.max_total_seconds),
        "wait": wait,
        "retry": tenacity.retry_if_exception(predicate),
        "before_sleep": before_sleep,
        "reraise": True,
    }
