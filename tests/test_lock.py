"""The environment lock: conditional acquire, polling, takeover of a dead holder's lease, fencing,
heartbeat, release and `unlock --force` (moto in-process, AWS's clock moved by hand)."""
from __future__ import annotations

import getpass
import os
import socket
import threading
import time

import pytest

from botocore.awsrequest import AWSResponse

from orchestrator import waiters
from orchestrator.aws import STATE
from orchestrator.errors import LockHeld, LockLost
from orchestrator.model import Change
from orchestrator.state import StateStore
from tests.test_state import T0, make_manifest, now, raw_items, store  # noqa: F401  (shared fixtures)

LEASE = 60  # make_manifest's lock_lease_seconds


def second_run(aws) -> StateStore:
    """Another process's store for the same environment."""
    return StateStore(aws, make_manifest())


def test_second_acquire_is_refused_naming_the_holder_and_its_age(store, aws, now):
    store.acquire("run-a", "apply")
    now.t = T0 + 12

    with pytest.raises(LockHeld) as raised:
        second_run(aws).acquire("run-b", "destroy")

    message = str(raised.value)
    assert raised.value.exit_code == 3
    assert "run run-a" in message
    assert f"{getpass.getuser()}@{socket.gethostname()}" in message
    assert f"pid {os.getpid()}" in message and "'apply'" in message
    assert "acquired 12s ago" in message and "expires in 48s" in message
    assert "orchestrator unlock dev --force" in message


def test_locks_of_other_environments_are_independent(store, aws):
    store.acquire("run-a", "apply")
    assert StateStore(aws, make_manifest("staging")).acquire("run-b", "apply").fence == 1


def test_waiting_acquire_polls_until_the_holder_releases(store, aws, monkeypatch):
    first = store.acquire("run-a", "apply")
    slept = []

    def holder_finishes(seconds):
        slept.append(seconds)
        first.release()

    monkeypatch.setattr(waiters, "sleep", holder_finishes)
    lease = second_run(aws).acquire("run-b", "apply", wait_seconds=30)

    assert lease.run_id == "run-b"
    assert slept == [2.0]
    assert store.lock_holder()["run_id"] == "run-b"


def test_waiting_acquire_gives_up_after_wait_seconds(store, aws, monkeypatch):
    store.acquire("run-a", "apply")
    slept = []
    monkeypatch.setattr(waiters, "sleep", slept.append)

    with pytest.raises(LockHeld):
        second_run(aws).acquire("run-b", "apply", wait_seconds=5)
    assert slept == [2.0, 2.0, 1.0]


def test_waiting_for_the_lock_says_so_once_then_every_30_seconds(store, aws, monkeypatch):
    from structlog.testing import capture_logs
    store.acquire("run-a", "apply")
    monkeypatch.setattr(waiters, "sleep", lambda seconds: None)
    with capture_logs() as logs, pytest.raises(LockHeld):
        second_run(aws).acquire("run-b", "apply", wait_seconds=75)
    said = [(entry["event"], entry["waited_s"], entry["gives_up_in_s"]) for entry in logs if "lock" in entry["event"]]
    assert said == [("waiting for the lock", 0, 75), ("still waiting for the lock", 30, 45),
                    ("still waiting for the lock", 60, 15)], "one line, then one every 30 s: not one per 2 s poll"
    assert all("run run-a (" in entry["held_by"] for entry in logs if "lock" in entry["event"])


def lock_item(aws) -> dict:
    return next(item for item in raw_items(aws) if item["sk"]["S"] == "lock")


def test_a_taker_whose_clock_is_hours_ahead_never_takes_a_live_lock(store, aws, now, monkeypatch):
    """Only AWS's clock decides: the second run's own clock, five hours fast, changes nothing,
    and the first run finishes undisturbed."""
    first = store.acquire("run-a", "apply")
    now.t = T0 + 30  # run-a is alive: its lease runs to T0 + 60 by AWS's clock
    wall_clock = time.time
    monkeypatch.setattr(time, "time", lambda: wall_clock() + 5 * 3600)

    with pytest.raises(LockHeld) as raised:
        second_run(aws).acquire("run-b", "apply")

    assert "acquired 30s ago" in str(raised.value) and "expires in 30s" in str(raised.value)
    now.t = T0 + 40
    assert first.renew() is True
    first.check_current()
    store.finish_step(first, "vpc", status="ok", desired_hash="h", outputs={"vpc_id": "vpc-1"}, changes=1)
    first.release()
    assert store.steps()["vpc"]["last_run"] == "run-a" and store.lock_holder() is None


def test_a_lock_whose_holder_died_an_hour_ago_is_taken_at_once(store, aws, now, monkeypatch):
    store.acquire("run-a", "apply")
    now.t = T0 + 3600
    slept = []
    monkeypatch.setattr(waiters, "sleep", slept.append)

    lease = second_run(aws).acquire("run-b", "apply", wait_seconds=600)

    assert (lease.run_id, lease.fence, slept) == ("run-b", 2, [])


def test_the_lock_item_never_carries_the_tables_ttl_attribute(store, aws, now):
    """DynamoDB's TTL would delete a stale lock item and its fence with it: the next run would
    count from 1 again and match a lost run's fence."""
    lease = store.acquire("run-a", "apply")
    assert "expires_at" not in lock_item(aws)
    lease.renew()
    assert "expires_at" not in lock_item(aws)
    lease.release()
    assert "expires_at" not in lock_item(aws) and lock_item(aws)["fence"] == {"N": "1"}


def test_dead_holder_is_taken_over_and_its_late_writes_change_nothing(store, aws, now):
    old = store.acquire("run-a", "apply")
    store.finish_step(old, "vpc", status="ok", desired_hash="h1", outputs={"vpc_id": "vpc-1"}, changes=1)
    now.t = T0 + LEASE + 1  # run-a died: no heartbeat

    newer_store = second_run(aws)
    new = newer_store.acquire("run-b", "apply")
    assert new.fence == old.fence + 1
    newer_store.finish_step(new, "vpc", status="ok", desired_hash="h2", outputs={"vpc_id": "vpc-2"}, changes=1)
    record = newer_store.steps()["vpc"]

    # The late run knows its lease ended unrenewed: it changes nothing more in AWS.
    with pytest.raises(LockLost, match="could not renew this run's lock"):
        old.check_current()
    # And DynamoDB fences out its state writes, whatever its clock believes.
    with pytest.raises(LockLost, match="taken over by run run-b; stopping without writing"):
        store.record_change(old, "vpc", Change("create", "subnet", "a", record={"az": "x"}))
    assert old.lost
    with pytest.raises(LockLost):
        store.finish_step(old, "vpc", status="failed", desired_hash="h1", outputs={}, changes=0, error="late")
    assert second_run(aws).steps()["vpc"] == record
    assert old.renew() is False


def test_lease_is_lost_when_the_same_run_id_takes_over_with_a_newer_fence(store, aws, now):
    """The fence, not only the run id, decides: a restarted run reusing its id still fences out
    its earlier incarnation."""
    old = store.acquire("run-a", "apply", manifest_hash="m")
    now.t = T0 + LEASE + 1
    newer_store = second_run(aws)
    new = newer_store.acquire("run-a", "apply", manifest_hash="m")

    with pytest.raises(LockLost):
        store.finish_run(old, "ok", {})
    runs = second_run(aws).runs()
    assert [run["result"] for run in runs] == ["running", "abandoned"], "the newer run's record is not the one closed"
    newer_store.finish_run(new, "ok", {})
    assert second_run(aws).runs()[0]["result"] == "ok"


def test_heartbeat_extends_the_lease(store, aws, now):
    lease = store.acquire("run-a", "apply")
    now.t = T0 + 40
    assert lease.renew() is True
    assert store.lock_holder()["lease_until"] == T0 + 40 + LEASE

    now.t = T0 + LEASE + 5  # past the first expiry, inside the renewed one
    with pytest.raises(LockHeld):
        second_run(aws).acquire("run-b", "apply")


def test_heartbeat_thread_starts_and_stops(store):
    lease = store.acquire("run-a", "apply")
    lease.start_heartbeat()
    lease.stop_heartbeat()
    assert not lease._thread.is_alive()
    assert not lease.lost


def test_release_frees_only_our_own_lock(store, aws, now):
    old = store.acquire("run-a", "apply")
    now.t = T0 + LEASE + 1
    new = second_run(aws).acquire("run-b", "apply")

    old.release()
    assert store.lock_holder()["run_id"] == "run-b"
    new.release()
    assert store.lock_holder() is None
    new.release()  # already gone: no error


def test_fence_only_grows_across_release_and_break(store, aws):
    fences = []
    for _ in range(2):
        lease = store.acquire("run-a", "apply")
        fences.append(lease.fence)
        lease.release()
    store.acquire("run-b", "apply")
    second_run(aws).break_lock()
    fences.append(store.acquire("run-c", "apply").fence)
    assert fences == [1, 2, 4]


def test_a_fenced_write_cancelled_by_a_concurrent_transaction_is_retried(store, aws):
    """Steps running at once each check the lock item in their transactions; DynamoDB cancels
    one of two that overlap (TransactionConflict), and that one is tried again."""
    lease = store.acquire("run-a", "apply")
    cancelled = []

    def conflict_once(**kwargs):
        if not cancelled:
            cancelled.append(True)
            return (AWSResponse("https://dynamodb.us-east-1.amazonaws.com/", 400, {}, None),
                    {"Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                     "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}]})
        return None

    aws.client("dynamodb", ledger_name=STATE).meta.events.register(
        "before-call.dynamodb.TransactWriteItems", conflict_once)
    store.finish_step(lease, "iam", status="ok", desired_hash="h", outputs={}, changes=1)

    assert cancelled == [True]
    assert second_run(aws).steps()["iam"]["status"] == "ok"


def test_break_lock_returns_the_holder_and_fences_it_out(store, aws):
    lease = store.acquire("run-a", "apply")

    holder = second_run(aws).break_lock()

    assert (holder["run_id"], holder["command"], holder["fence"]) == ("run-a", "apply", 1)
    assert store.lock_holder() is None
    assert second_run(aws).break_lock() is None
    with pytest.raises(LockLost, match="broken"):
        store.finish_step(lease, "iam", status="ok", desired_hash="h", outputs={}, changes=1)
    assert store.steps() == {}


def test_racing_acquires_have_exactly_one_winner(store, aws, monkeypatch):
    """Acquiring is one conditional write, so two racing runs cannot both pass a check.

    moto runs concurrent in-process requests without DynamoDB's per-item atomicity (unguarded,
    both racers' conditions can pass before either writes), so each UpdateItem is made atomic
    here as DynamoDB makes it. A get-then-put acquire would still let both win."""
    from moto.dynamodb.models import DynamoDBBackend
    atomic, update_item = threading.Lock(), DynamoDBBackend.update_item

    def atomic_update_item(*args, **kwargs):
        with atomic:
            return update_item(*args, **kwargs)

    monkeypatch.setattr(DynamoDBBackend, "update_item", atomic_update_item)
    for round_ in range(5):
        start = threading.Barrier(2)
        outcomes = []

        def race(run_id):
            contender = second_run(aws)
            start.wait()
            try:
                outcomes.append(contender.acquire(run_id, "apply").run_id)
            except LockHeld:
                outcomes.append("held")

        threads = [threading.Thread(target=race, args=(f"run-{round_}-{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [outcome for outcome in outcomes if outcome != "held"]
        assert len(winners) == 1 and outcomes.count("held") == 1
        assert store.lock_holder()["run_id"] == winners[0]
        store.break_lock()


def test_a_run_whose_lock_was_taken_over_or_broken_is_recorded_as_abandoned(store, aws, now):
    store.acquire("run-a", "apply", manifest_hash="m")
    now.t = T0 + LEASE + 1  # it died without finishing
    second = second_run(aws)
    second.acquire("run-b", "apply", manifest_hash="m")
    second.break_lock()
    assert {run["run_id"]: run["result"] for run in second.runs()} == {"run-a": "abandoned", "run-b": "abandoned"}


def step_reads(aws) -> int:
    return sum(1 for call in aws.ledger.calls if call.step == STATE and call.operation == "Query")


def test_the_records_read_while_the_lock_is_taken_are_the_last_holders_final_ones(store, aws):
    """The next run reads the step records beside taking the lock, and sees every write of the
    run that held it before, up to its release."""
    first = store.acquire("run-a", "apply", manifest_hash="m")
    store.finish_step(first, "vpc", status="ok", desired_hash="h1", outputs={"vpc_id": "vpc-1"}, changes=1)
    store.finish_run(first, "ok", {})  # and frees the lock

    second = second_run(aws)
    second.ensure_table()
    queries = step_reads(aws)
    second.acquire("run-b", "apply", manifest_hash="m")
    assert second.steps()["vpc"]["outputs"] == {"vpc_id": "vpc-1"}
    assert step_reads(aws) == queries + 1, "the records are read once, as the lock is taken"


def test_records_written_between_reading_the_lock_and_taking_it_are_not_missed(store, aws):
    """A run that read the lock free, then lost the race for it to a run that wrote records and
    released: its taking fails on the fence that moved, and it reads the records again with
    the next attempt, so it sees what the other run wrote."""
    late = second_run(aws)
    late.ensure_table()  # reads the lock: free, fence 0
    other = store.acquire("run-a", "apply")
    store.finish_step(other, "vpc", status="ok", desired_hash="h1", outputs={"vpc_id": "vpc-1"}, changes=1)
    other.release()

    lease = late.acquire("run-b", "apply")
    assert lease.fence == 2
    assert late.steps()["vpc"]["outputs"] == {"vpc_id": "vpc-1"}


def test_a_takeover_reads_the_records_only_once_the_lock_is_taken(store, aws, now):
    """A holder whose lease expired may still write until the lock is taken from it: the run
    taking over reads the records afterwards, not beside the taking."""
    old = store.acquire("run-a", "apply")
    now.t = T0 + LEASE + 1
    newer = second_run(aws)
    newer.ensure_table()
    store.finish_step(old, "vpc", status="ok", desired_hash="h1", outputs={"vpc_id": "late"}, changes=1)
    newer.acquire("run-b", "apply")
    assert newer.steps()["vpc"]["outputs"] == {"vpc_id": "late"}


def test_a_run_record_dynamodb_refuses_still_lets_the_lock_be_freed_and_says_so(store, aws, now):
    from botocore.exceptions import ClientError
    from structlog.testing import capture_logs

    refusing = threading.Event()

    def refused(**kwargs):
        if refusing.is_set():
            raise ClientError({"Error": {"Code": "ValidationException",
                                         "Message": "Item size has exceeded the maximum"}}, "TransactWriteItems")

    lease = store.acquire("run-a", "apply", manifest_hash="abc")
    aws.register("before-call.dynamodb.TransactWriteItems", refused)
    refusing.set()
    with capture_logs() as logs:
        store.finish_run(lease, "ok", {})
    refusing.clear()

    assert store.lock_holder() is None, "freed at once, not when its lease ends"
    assert not lease.lost
    said = [entry["event"] for entry in logs if entry["log_level"] in ("warning", "info")]
    assert said == ["run record not finished; freeing the lock without it", "lock released"]
    assert [run["result"] for run in store.runs()] == ["running"]
    assert second_run(aws).acquire("run-b", "apply").fence == lease.fence + 1
