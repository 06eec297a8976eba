"""Runs the steps of a graph concurrently as their dependencies finish.

A step starts as soon as everything it waits for has succeeded, up to `parallelism` at once.
A failed step skips every step that waits for it; independent branches run to the end.
"""
from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable


def run_concurrently(waits_for: dict[str, set[str]], work: Callable[[str], bool], parallelism: int | None = None,
                     on_skip: Callable[[str, list[str]], None] = lambda name, blockers: None,
                     on_interrupt: Callable[[], None] = lambda: None) -> dict[str, str]:
    """Run `work(name)` for every name once all of `waits_for[name]` succeeded.

    `work` returns True on success and False (or raises) on failure. Returns name → "ok",
    "failed" or "skipped". Names outside the mapping are treated as already done.

    Ctrl-C calls `on_interrupt` (which tells the running work to stop at its next safe point),
    starts nothing new, and waits for the running work to end before raising KeyboardInterrupt:
    threads that still change AWS must never outlive the caller's lock.
    """
    outcome: dict[str, str] = {}
    pending = dict(waits_for)
    workers = max(1, parallelism or len(pending) or 1)
    running: dict[Future, str] = {}
    interrupted = False

    def settle_skips() -> None:
        changed = True
        while changed:
            changed = False
            for name, needs in list(pending.items()):
                blockers = [dep for dep in needs if outcome.get(dep) in ("failed", "skipped")]
                if blockers:
                    del pending[name]
                    outcome[name] = "skipped"
                    on_skip(name, blockers)
                    changed = True

    def start_ready(pool: ThreadPoolExecutor) -> None:
        ready = [name for name, needs in pending.items()
                 if all(outcome.get(dep, "ok" if dep not in waits_for else None) == "ok" for dep in needs)]
        for name in ready[: workers - len(running)]:
            del pending[name]
            context = contextvars.copy_context()
            running[pool.submit(context.run, _succeeded, work, name)] = name

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step") as pool:
        while pending or running:
            try:
                settle_skips()
                start_ready(pool)
                if not running:
                    if pending:  # nothing can start: only possible with a dependency cycle
                        raise RuntimeError(f"steps cannot start: {sorted(pending)}")
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    outcome[running.pop(future)] = "ok" if future.result() else "failed"
            except KeyboardInterrupt:
                pending.clear()
                if not interrupted:
                    interrupted = True
                    try:
                        on_interrupt()
                    except KeyboardInterrupt:  # pressed again at once: the wait for running work goes on
                        pass
    if interrupted:
        raise KeyboardInterrupt
    return outcome


def _succeeded(work: Callable[[str], bool], name: str) -> bool:
    try:
        return bool(work(name))
    except Exception:  # the work function reports its own errors; here it only counts as failed
        return False
