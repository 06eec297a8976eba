"""`Aws.each`: a step's independent reads at once, never more of one service in flight than its
bound, results in the items' order, and a failure raised as the loop would have raised it."""
from __future__ import annotations

import threading

import pytest

from orchestrator import aws as aws_module
from orchestrator.aws import Aws

ITEMS = 12


def test_no_more_reads_of_a_service_in_flight_than_its_bound_and_the_bound_is_used():
    aws = Aws("us-east-1")
    limit = aws_module.CONCURRENCY["iam"]
    state = {"in_flight": 0, "peak": 0, "started": 0, "reached": False}
    changed = threading.Condition()

    def read(item: int) -> int:
        with changed:
            state["in_flight"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
            state["reached"] |= state["in_flight"] == limit
            changed.notify_all()
            # Hold the slot until the bound is full (or nothing else can start), then let go.
            changed.wait_for(lambda: state["reached"] or state["started"] == ITEMS, timeout=10)
            state["in_flight"] -= 1
        return item * 10

    assert aws.each("iam", read, range(ITEMS)) == [item * 10 for item in range(ITEMS)]
    assert state["peak"] == limit


def test_the_first_failure_in_item_order_is_raised_even_when_a_later_item_fails_first():
    aws = Aws("us-east-1")
    later_failed = threading.Event()

    def read(item: int) -> int:
        if item == 1:
            later_failed.wait(timeout=30)  # fail only after item 2 has failed
            raise LookupError("item 1 is gone")
        if item == 2:
            later_failed.set()
            raise PermissionError("item 2 is denied")
        return item

    with pytest.raises(LookupError, match="^item 1 is gone$"):
        aws.each("s3", read, range(4))


def test_reads_within_a_read_run_in_its_own_thread_instead_of_waiting_for_a_slot():
    aws = Aws("us-east-1")
    outer_items = 2 * aws_module.CONCURRENCY["iam"]  # every slot held by an outer read

    def outer(item: int) -> bool:
        mine = threading.get_ident()
        return aws.each("iam", lambda _: threading.get_ident() == mine, range(3)) == [True] * 3

    assert aws.each("iam", outer, range(outer_items)) == [True] * outer_items


def test_each_files_the_calls_under_the_step_that_asked():
    aws = Aws("us-east-1")
    token = aws_module.current_step.set("storage")
    try:
        assert aws.each("s3", lambda _: aws_module.current_step.get(), range(3)) == ["storage"] * 3
    finally:
        aws_module.current_step.reset(token)


def test_batches_of_several_services_of_two_steps_do_not_queue_behind_each_other():
    """Each item of such a batch calls a service of its own: two steps' batches, each as large
    as the bound, all go out at once (with one bound for the run, the second waited for the first)."""
    aws = Aws("us-east-1")
    size = aws_module.DEFAULT_CONCURRENCY
    all_sent = threading.Barrier(2 * size, timeout=10)

    def read(item: int) -> bool:
        try:
            all_sent.wait()
        except threading.BrokenBarrierError:
            return False
        return True

    batches = []
    threads = [threading.Thread(target=lambda: batches.append(aws.each(aws_module.SEVERAL_SERVICES, read, range(size))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert batches == [[True] * size] * 2
