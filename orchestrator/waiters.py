"""The one waiter helper: poll at once, then back off; report progress; give up at a bound.

botocore's waiters sleep a fixed delay before the first check; AWS resources here are often
ready at once (and always in the emulator), so this polls immediately and then backs off
1 s, 2 s, 4 s … up to `max_delay`.
"""
from __future__ import annotations

import time
from typing import Callable

import structlog

from orchestrator.errors import OrchestratorError

#: Replaced in tests so waits that must back off do not take wall time.
sleep: Callable[[float], None] = time.sleep
clock: Callable[[], float] = time.monotonic


class WaitTimeout(OrchestratorError):
    pass


class WaitFailed(OrchestratorError):
    pass


def wait_until(what: str, check: Callable[[], tuple[bool, str]], *, timeout: float = 900.0,
               max_delay: float = 15.0, log=None) -> str:
    """Poll `check()` → (done, status) until done; return the final status.

    `check` raises `WaitFailed` for a terminal failure state (a NAT gateway that `failed`).
    Progress is logged on every poll after the first, naming what is awaited and for how long.
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
        delay = min(delay * 2, max_delay)
