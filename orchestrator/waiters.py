"""The one waiter: poll at once, then back off; report progress; give up at a bound.

Every wait of the code base goes through `settle`: the waits of a step's changes are polled
together (N service rollouts take as long as the slowest, not their sum), and each names what
it awaits in progress lines and errors. Where botocore defines a waiter for the same
condition, `botocore_check` turns its acceptors into a check, so the states that count as
done or failed are AWS's own. botocore's own `wait()` is not used: it calls the operation
once and then sleeps its fixed delay (15 s for a NAT gateway) between polls, and it cannot
be interrupted or polled beside other waits; here a wait polls at once, then backs off 1 s,
2 s, 4 s … up to `max_delay`, and stops between polls when told to (Ctrl-C, a lost lock).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar

from orchestrator.aws import error_code
from orchestrator.errors import OrchestratorError
from orchestrator.log import get_logger
from orchestrator.model import Wait

T = TypeVar("T")

#: Replaced in tests so waits that must back off do not take wall time.
sleep: Callable[[float], None] = time.sleep
clock: Callable[[], float] = time.monotonic


class WaitTimeout(OrchestratorError):
    pass


class WaitFailed(OrchestratorError):
    pass


def settle(waits: Iterable[Wait], *, max_delay: float = 15.0, log=None,
           stop: Callable[[], None] | None = None) -> dict[str, str]:
    """Poll every wait's check until all are done; return each one's final status by `what`.

    A check raises `WaitFailed` for a terminal failure state (a NAT gateway that `failed`);
    that ends the settling at once. Progress is logged on every round after the first, naming
    what is still awaited and for how long; a wait that outlasts its own timeout raises
    `WaitTimeout` naming it and its last status. `stop()`, called between rounds, raises to end
    the wait early (Ctrl-C, a lost lock).
    """
    log = log or get_logger("orchestrator.wait")
    pending = list(waits)
    final: dict[str, str] = {}
    started = clock()
    delay = 1.0
    rounds = 0
    while pending:
        rounds += 1
        still: list[tuple[Wait, str]] = []
        for wait in pending:
            done, status = wait.check()
            if done:
                if rounds > 1 and wait.what not in final:  # several changes may await the same thing: said once
                    log.info("wait over", what=wait.what, status=status, waited_s=round(clock() - started, 1))
                final[wait.what] = status
            else:
                still.append((wait, status))
        if not still:
            break
        elapsed = clock() - started
        for wait, status in still:
            if elapsed + delay > wait.timeout:
                raise WaitTimeout(f"gave up waiting for {wait.what} after {elapsed:.0f}s (last status: {status})")
        step = _next_check(delay, [wait.due for wait, _ in still if wait.due is not None])
        awaited: dict[str, str] = {}  # several changes awaiting one thing: named once, with its first status
        for wait, status in still:
            awaited.setdefault(wait.what, status)
        log.info("waiting", what="; ".join(f"{what}: {status}" for what, status in awaited.items()),
                 waited_s=round(elapsed, 1), next_check_s=round(step, 1))
        sleep(step)
        if stop is not None:
            stop()
        delay = min(delay * 2, max_delay)
        pending = [wait for wait, _ in still]
    return final


#: How far past a known end a check comes, so that it finds the span over (the clocks of a sleep
#: and of the check need not agree to the microsecond).
DUE_MARGIN = 0.05


def _next_check(delay: float, dues: list[float]) -> float:
    """Seconds to sleep before the next round: the back-off's `delay`, but never past a span of
    time known to end sooner (a wait's `due`). Spans ending within the same `delay` (the roles a
    run changed one after another, milliseconds apart) are slept to together, to the last of
    them: one round for all, not one per role."""
    lefts = [max(due - clock(), 0.0) for due in dues]
    within = [left for left in lefts if left <= delay]
    return max(within) + DUE_MARGIN if within else delay


def wait_until(what: str, check: Callable[[], tuple[bool, str]], *, timeout: float = 900.0,
               max_delay: float = 15.0, log=None, stop: Callable[[], None] | None = None) -> str:
    """One wait on its own (`settle` of a single `Wait`); returns its final status."""
    return settle([Wait(what, check, timeout)], max_delay=max_delay, log=log, stop=stop)[what]


def botocore_check(client, waiter_name: str, what: str, explain: Callable[[dict], str] | None = None,
                   **params) -> Callable[[], tuple[bool, str]]:
    """A check from botocore's waiter `waiter_name` of `client`: its operation called with
    `params`, its acceptors deciding done / failed / not yet. The status shown is the value the
    first path acceptor reads (`pending`), or the error code an error acceptor matched.
    `explain(response)` adds AWS's own words to a failure (a NAT gateway's FailureMessage)."""
    from botocore import xform_name
    from botocore.exceptions import ClientError

    config = client.get_waiter(waiter_name).config
    operation = getattr(client, xform_name(config.operation))
    path = next((a.argument for a in config.acceptors if a.matcher.startswith("path")), None)

    def check() -> tuple[bool, str]:
        try:
            response = operation(**params)
        except ClientError as error:
            if not any(a.matcher == "error" for a in config.acceptors):
                raise
            response = error.response
        status = _status(response, path)
        for acceptor in config.acceptors:
            if acceptor.matcher_func(response):
                if acceptor.state == "success":
                    return True, status
                if acceptor.state == "failure":
                    detail = explain(response) if explain and "Error" not in response else ""
                    raise WaitFailed(f"{what} is {status}{': ' + detail if detail else ''}")
                return False, status
        if "Error" in response:  # an error no acceptor expects
            raise ClientError(response, config.operation)
        return False, status

    return check


def _status(response: dict, path: str | None) -> str:
    import jmespath

    if "Error" in response:
        return response["Error"].get("Code", "error")
    found = jmespath.search(path, response) if path else None
    if isinstance(found, list):
        found = ", ".join(sorted({str(item) for item in found})) or "none"
    return str(found) if found is not None else "unknown"


def retry_while(what: str, call: Callable[[], T], codes: Iterable[str], *, timeout: float = 600.0,
                max_delay: float = 15.0, log=None, stop: Callable[[], None] | None = None) -> T:
    """Call `call()` until it stops failing with one of the AWS error `codes` (a delete AWS
    refuses while a dependant is still going away); return its result.

    Polls, backs off and reports progress as `settle` does; any other error ends it at once,
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
