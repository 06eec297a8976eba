"""The one waiter helper: poll at once, then back off; report progress; give up at a bound.

botocore's waiters sleep a fixed delay before the first check; AWS resources here are often
ready at once (and always in the emulator), so this polls immediately and then backs off
1 s, 2 s, 4 s … up to `max_delay`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar

import structlog

from orchestrator.aws import error_code
from orchestrator.errors import OrchestratorError

T = TypeVar("T")

#: Replaced in tests so waits that must back off do not take wall time.
sleep: Callable[[float], None] = time.sleep
clock: Callable[[], float] = time.monotonic


class WaitTimeout(OrchestratorError):
    pass


class WaitFailed(OrchestratorError):
    pass


def wait_until(what: str, check: Callable[[], tuple[bool, str]], *, timeout: float = 900.0,
               max_delay: float = 15.0, log=None, stop: Callable[[], None] | None = None) -> str:
    """Poll `check()` → (done, status) until done; return the final status.

    `check` raises `WaitFailed` for a terminal failure state (a NAT gateway that `failed`).
    Progress is logged on every poll after the first, naming what is awaited and for how long.
    `stop()`, called between polls, raises to end the wait early (Ctrl-C, a lost lock).
    """
    log = log or structlog.get_logger("orchestrator.wait")
    started = clock()
    delay = 1.0
    polls = 0
    while True:
        done, status = check()
        polls += 1
        elapsed = clock() - started
        if done:
            if polls > 1:
                log.info("wait over", what=what, status=status, waited_s=round(elapsed, 1))
            return status
        if elapsed + delay > timeout:
            raise WaitTimeout(f"gave up waiting for {what} after {elapsed:.0f}s (last status: {status})")
        log.info("waiting", what=what, status=status, waited_s=round(elapsed, 1), next_check_s=delay)
        sleep(delay)
        if stop is not None:
            stop()
        delay = min(delay * 2, max_delay)


def retry_while(what: str, call: Callable[[], T], codes: Iterable[str], *, timeout: float = 600.0,
                max_delay: float = 15.0, log=None, stop: Callable[[], None] | None = None) -> T:
    """Call `call()` until it stops failing with one of the AWS error `codes` (a delete AWS
    refuses while a dependant is still going away); return its result.

    Polls, backs off and reports progress as `wait_until` does; any other error ends it at once,
    and so does the timeout (a `WaitTimeout` naming the last error code).
    """
    codes = frozenset(codes)
    result: list[T] = []

    def attempt() -> tuple[bool, str]:
        try:
            result.append(call())
        except Exception as error:
            if error_code(error) not in codes:
                raise
            return False, error_code(error)
        return True, "done"

    wait_until(what, attempt, timeout=timeout, max_delay=max_delay, log=log, stop=stop)
    return result[0]
