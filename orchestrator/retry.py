"""The one retry policy, for what botocore's own retries do not cover: AWS's eventual
consistency (a role not yet assumable, a VPC not yet visible) and conflicts worth another try
(a DynamoDB transaction cancelled by a concurrent one). Exponential backoff with jitter,
bounded, each retry logged.

Throttling is not retried here: botocore's standard retry mode (orchestrator/aws.py) already
retries every throttled call of every client, with backoff and a retry quota shared by the
client. Retrying it here as well would multiply the attempts (6 x 8 per call) and defeat that
quota; a call still throttled after botocore's attempts fails and names the error."""
from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity import wait_random_exponential

from orchestrator.aws import error_code
from orchestrator.log import get_logger

T = TypeVar("T")

#: Replaced in tests so retry loops run without waiting.
sleep: Callable[[float], None] = time.sleep

log = get_logger("orchestrator.retry")


def eventually(fn: Callable[..., T], *args, retry_on: Iterable[str] = (),
               retry_if: Callable[[Exception], bool] | None = None, attempts: int = 8,
               max_seconds: float = 120.0, **kwargs) -> T:
    """Call `fn(*args, **kwargs)`, retrying on the AWS error codes in `retry_on` and on the
    errors `retry_if` accepts (when the code alone does not say whether to retry)."""
    codes = frozenset(retry_on)

    def should_retry(error: BaseException) -> bool:
        return error_code(error) in codes or (retry_if is not None and retry_if(error))  # type: ignore[arg-type]

    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.info("retrying", call=getattr(fn, "__name__", str(fn)), code=error_code(error),
                 attempt=state.attempt_number, wait_s=round(state.next_action.sleep, 2) if state.next_action else 0)

    retrying = Retrying(retry=retry_if_exception(should_retry),
                        wait=wait_random_exponential(multiplier=0.5, max=20),
                        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
                        sleep=lambda seconds: sleep(seconds), before_sleep=report, reraise=True)
    return retrying(fn, *args, **kwargs)
