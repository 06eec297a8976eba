"""The environment's lease lock: one item of the state table (sort key `lock`), taken, renewed
and released in AWS's time (DESIGN.md, "State in DynamoDB"). The state store
(orchestrator.state) holds the table and the records; it hands out the lock
(`StateStore.acquire`, `lock_holder`, `break_lock`) and fences its writes with the `Lease`.

The lock item holds the holder (run id, user, host, pid, command, `acquired_at`,
`lease_until`), the fencing counter `fence`, and `table_checked_at` (when a run last verified the
table's settings: the store's "Reads"). It never carries the table's TTL attribute: TTL would
delete a stale lock item, and its fence with it.

**Time is AWS's.** Every time the store writes is the time DynamoDB states in the `Date` header
of its answers, carried forward between answers by this machine's monotonic clock (`AwsTime`);
no machine's wall clock is ever read. The holder writes `lease_until` = AWS's time + the lease
when it takes the lock and at each heartbeat; a taker's conditional write succeeds only if
`lease_until` is before the taker's lower bound of AWS's time now. Both sides read the one
clock, so a runner whose own clock is hours ahead never takes a live lock, and a lock whose
holder died more than a lease ago is taken on the first try. (The other clock-free design, the
record-version wait of Amazon's DynamoDB lock client, must watch a lock unchanged for a full
lease before taking it, even one whose holder died an hour ago.) `Date` has whole seconds and
is stamped while a request is in flight, so the bounds are a second plus one round trip apart:
a taker uses the lower one, and the holder stops changing AWS a margin before its lease ends
by the upper one.

**Fencing.** Every write a run makes under the lock goes in one transaction with a check that
the lock item still names this run and its fence number (`Lease.condition_check`). The fence
only grows: taking the lock adds one, releasing and `unlock --force` remove the holder but keep
the item. A run whose lease expired and was taken over can never overwrite what the newer run
wrote.
"""
from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Callable

from botocore.exceptions import BotoCoreError, ClientError

from orchestrator import waiters
from orchestrator.aws import error_code
from orchestrator.errors import LockHeld, LockLost
from orchestrator.items import attribute, fields, iso, serialize
from orchestrator.log import get_logger
from orchestrator.retry import eventually

if TYPE_CHECKING:
    from orchestrator.state import StateStore

#: This machine's monotonic clock: it only measures time since DynamoDB's last answer.
ticks = time.monotonic

log = get_logger("orchestrator.lock")

LOCK = "lock"
#: How often a run waiting for the lock (`wait_seconds`) looks again.
POLL_SECONDS = 2.0
#: While it waits, a run says so once, then again this often (the polls between are silent).
WAIT_REPORT_SECONDS = 30.0
HOLDER_FIELDS = ("run_id", "user", "host", "pid", "command", "acquired_at", "lease_until")

_SENT = "orchestrator_sent_at"


class AwsTime:
    """AWS's time as DynamoDB states it in the `Date` header of each answer, carried forward by
    this machine's monotonic clock (never its wall clock, which may be off by hours).

    `Date` has whole seconds and was stamped between the request's sending and its answer's
    arrival, so AWS's time now lies between `earliest()` and `latest()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: tuple[float, float, float] | None = None  # (AWS date, sent, received) in ticks

    def register(self, client) -> None:
        client.meta.events.register("before-call.dynamodb", self._sending)
        client.meta.events.register("after-call.dynamodb", self._answered)

    def _sending(self, context: dict, **kwargs) -> None:
        context[_SENT] = ticks()

    def _answered(self, http_response, context: dict, **kwargs) -> None:
        date = _http_date(http_response.headers.get("Date")) if http_response is not None else None
        if date is None or _SENT not in context:
            return
        seen = (date, context[_SENT], ticks())
        with self._lock:
            if self._seen is None or seen[2] >= self._seen[2]:
                self._seen = seen

    def earliest(self) -> float:
        """AWS's time now is at least this."""
        date, _, received = self._last()
        return date + (ticks() - received)

    def latest(self) -> float:
        """AWS's time now is at most this."""
        date, sent, _ = self._last()
        return date + 1 + (ticks() - sent)

    def _last(self) -> tuple[float, float, float]:
        with self._lock:
            if self._seen is None:
                raise RuntimeError("AWS's time is not known before DynamoDB's first answer")
            return self._seen


def _http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP `Date` header (always GMT), or None."""
    try:
        moment = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment else None


class Lock:
    """The lock item of one environment, read and written through the store's table."""

    def __init__(self, store: StateStore):
        self.store = store
        self.lease_seconds = store.manifest.state.lock_lease_seconds
        #: The lock item as last read (`look`), until an attempt to take the lock uses it.
        self._seen: dict | None = None

    def acquire(self, run_id: str, command: str, wait_seconds: float = 0,
                also: Callable[[float], list[dict]] = lambda now: []) -> Lease:
        """Take the environment's lock, polling up to `wait_seconds` while another run holds it.
        `also(now)` gives writes that go in the same transaction as the taking (the run record)."""
        waited, report_at = 0.0, 0.0
        while True:
            lease, holder = self._try_acquire(run_id, command, also)
            if lease is not None:
                return lease
            if waited >= wait_seconds:
                raise LockHeld(self._held_message(holder))
            if waited >= report_at:  # once at first, then every WAIT_REPORT_SECONDS: not every poll
                who = f"run {holder.get('run_id')} ({holder.get('user')}@{holder.get('host')}, {holder.get('command')})"
                log.info("waiting for the lock" if waited == 0 else "still waiting for the lock", held_by=who,
                         waited_s=round(waited), gives_up_in_s=round(wait_seconds - waited))
                report_at += WAIT_REPORT_SECONDS
            delay = min(POLL_SECONDS, wait_seconds - waited)
            waiters.sleep(delay)
            waited += delay

    def look(self) -> dict:
        """Read the lock item (consistently) and keep what it says for the next attempt to take
        it: its holder, lease and fence ({} before the first run)."""
        store = self.store
        item = store.client.get_item(TableName=store.table, Key=store.key(LOCK), ConsistentRead=True).get("Item")
        self._seen = fields(item)
        return self._seen

    def seen_free(self) -> None:
        """The lock item is known absent without reading it (this run just created the table):
        the next attempt takes it on the condition that it still is."""
        self._seen = {}

    def _try_acquire(self, run_id: str, command: str, also) -> tuple[Lease | None, dict]:
        """Take the lock if it is free, or if its lease ended before AWS's time now (the lower
        bound: a lease is never cut short). Returns (lease, {}) on success, (None, holder) when
        another run holds it.

        The taking is one transaction, conditional on the lock item being as it was last read
        (`look`: its fence, and no live lease), with `also`'s writes. While it is in flight the
        step records are read (`StateStore.load_steps_meanwhile`), which is safe when the lock
        was read free: a record is only ever written in a transaction that checks the lock item
        names its writer, and taking the lock adds one to the fence, so a lock read free with
        fence F and taken by this transaction on the condition "fence is still F" was free, and
        nothing wrote a record, from that read until this taking. The records are read after the
        lock was (their query is sent once the lock's answer arrived) and before or after the
        taking, so they are the records as they stand when this run holds the lock. A lock read
        held by an expired lease (a takeover) gives no such guarantee: its holder may still
        write until the taking; the records are then read afterwards."""
        seen, self._seen = (self._seen if self._seen is not None else self.look()), None
        while True:  # the lock changed between the read and the taking, but is free: once more (each
            # change raised its fence, so another run took or freed it: this ends once one holds it)
            now = round(self.store.time.earliest(), 3)
            if seen.get("lease_until", now - 1) >= now:  # held, as the taking's condition reads it
                return None, seen
            lease, seen = self._take(run_id, command, seen, now, also)
            if lease is not None:
                return lease, {}

    def _take(self, run_id: str, command: str, seen: dict, now: float, also) -> tuple[Lease | None, dict]:
        """One conditional taking of the lock as `seen`; (None, the lock item now) if it changed."""
        holder = {"run_id": run_id, "user": user(), "host": socket.gethostname(), "pid": os.getpid(),
                  "command": command, "acquired_at": now, "lease_until": now + self.lease_seconds}
        fence = seen.get("fence", 0)
        names = {f"#{name}": name for name in [*holder, "fence"]}
        # DynamoDB refuses a value the expressions do not use: `:seen` only where the item has a fence.
        values = {f":{name}": value for name, value in holder.items()} | {":next": fence + 1, ":now": now}
        if "fence" in seen:
            values[":seen"] = fence
        unchanged = "#fence = :seen" if "fence" in seen else "attribute_not_exists(#fence)"
        store = self.store
        taking = {"Update": {
            "TableName": store.table, "Key": store.key(LOCK),
            "UpdateExpression": "SET " + ", ".join(f"#{name} = :{name}" for name in holder) + ", #fence = :next",
            "ConditionExpression": f"{unchanged} AND (attribute_not_exists(#lease_until) OR #lease_until < :now)",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": serialize(values),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
        records = None if seen.get("run_id") else store.load_steps_meanwhile()
        try:
            eventually(store.client.transact_write_items, TransactItems=[taking, *also(now)], retry_if=conflicted)
        except ClientError as error:
            if records is not None:
                records.cancel()
            reasons = error.response.get("CancellationReasons", [])
            if not (reasons and reasons[0].get("Code") == "ConditionalCheckFailed"):
                raise
            return None, fields(reasons[0].get("Item"))
        if records is not None:
            store.adopt_steps(records)
        if seen.get("run_id"):
            log.warning("lock expired, taking over", from_run=seen["run_id"],
                        holder=f"{seen.get('user')}@{seen.get('host')}", fence=fence + 1)
            store.close_abandoned_run(seen["run_id"], taking_over=True)
        log.info("lock acquired", env=store.manifest.environment, run_id=run_id, fence=fence + 1)
        return Lease(self, run_id, fence + 1, holder["lease_until"], acquired_at=now,
                     table_checked_before=seen.get("table_checked_at")), {}

    def _held_message(self, holder: dict) -> str:
        now = self.store.time.earliest()
        env = self.store.manifest.environment
        acquired, until = holder.get("acquired_at", now), holder.get("lease_until", now)
        return (f"{env} is locked by run {holder.get('run_id')} ({holder.get('user')}@{holder.get('host')}, "
                f"pid {holder.get('pid')}, command {holder.get('command')!r}), acquired {_ago(now - acquired)} ago; "
                f"the lease expires in {_ago(until - now)} ({iso(until)}, AWS's clock) unless that run renews it.\n"
                f"If that run is dead (a stale lock), wait for the lease to expire or run "
                f"`orchestrator unlock {env} --force`.")

    def holder(self) -> dict | None:
        """Who holds the lock (the lock item's fields), or None when it is free."""
        holder = self.look()
        return holder if holder.get("run_id") else None

    def break_(self) -> dict | None:
        """Free the lock whoever holds it (`unlock --force`); returns the holder removed. The
        item and its fence stay."""
        holder = fields(self.update_item(**_free_lock(), ReturnValues="ALL_OLD").get("Attributes"))
        holder = holder if holder.get("run_id") else None
        if holder:
            log.warning("lock broken", env=self.store.manifest.environment, run_id=holder.get("run_id"),
                        holder=f"{holder.get('user')}@{holder.get('host')}")
            self.store.close_abandoned_run(holder["run_id"])
        return holder

    def update_item(self, **params) -> dict:
        """UpdateItem on the lock item."""
        return self.store.client.update_item(TableName=self.store.table, Key=self.store.key(LOCK), **params)


class Lease:
    """This run's hold on the lock: renewed by a heartbeat, checked before every write."""

    def __init__(self, lock: Lock, run_id: str, fence: int, lease_until: float, *, acquired_at: float,
                 table_checked_before: float | None = None):
        self.lock = lock
        self.run_id = run_id
        self.fence = fence
        self.lease_until = lease_until  # AWS's time
        self.acquired_at = acquired_at  # AWS's time
        #: When a run last verified the table's settings, as the lock item said when it was taken.
        self.table_checked_before = table_checked_before
        self.table_checked_at: float | None = None  # set when this run verified the table's settings
        self.lost = False
        self.taken_by: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False

    def start_heartbeat(self) -> None:
        interval = self.lock.lease_seconds / 3
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True,
                                        name=f"lock-heartbeat-{self.run_id}")
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval) and self.renew():
            pass

    def condition(self) -> dict:
        """Condition parameters that hold only while the lock item is still this lease's."""
        return {"ConditionExpression": "#fence = :fence AND #run_id = :run_id",
                "ExpressionAttributeNames": {"#fence": "fence", "#run_id": "run_id"},
                "ExpressionAttributeValues": serialize({":fence": self.fence, ":run_id": self.run_id})}

    def condition_check(self) -> dict:
        """The action of a TransactWriteItems that fences it: the lock is still this lease's
        (on failure, DynamoDB's cancellation reason carries the lock item as it is now)."""
        store = self.lock.store
        return {"ConditionCheck": {"TableName": store.table, "Key": store.key(LOCK),
                                   "ReturnValuesOnConditionCheckFailure": "ALL_OLD", **self.condition()}}

    def renew(self) -> bool:
        """Push the lease's end one lease past AWS's time now if the lock is still ours. A failed
        call (network, throttling) is retried at the next beat, well before the lease runs out;
        a lock that is no longer ours marks the lease lost and returns False."""
        until = round(self.lock.store.time.earliest(), 3) + self.lock.lease_seconds
        condition = self.condition()
        condition["ExpressionAttributeNames"]["#lease_until"] = "lease_until"
        condition["ExpressionAttributeValues"][":lease_until"] = attribute(until)
        try:
            eventually(self.lock.update_item, UpdateExpression="SET #lease_until = :lease_until",
                       ReturnValuesOnConditionCheckFailure="ALL_OLD", retry_on=("TransactionConflictException",),
                       **condition)
        except (ClientError, BotoCoreError) as error:
            if error_code(error) != "ConditionalCheckFailedException":
                log.warning("lock renewal failed; retrying at the next beat", error=str(error))
                return True
            self.lose(fields(error.response.get("Item")))
            return False
        self.lease_until = until
        return True

    def lose(self, holder: dict) -> None:
        """The lock item no longer names this lease: `holder` is whoever it names now (or {})."""
        self.lost = True
        self.taken_by = holder if holder and holder.get("run_id") else None  # a freed lock keeps its fence
        log.error("lock lost", run_id=self.run_id, taken_by=holder.get("run_id") if holder else None)

    def check_current(self) -> None:
        """Before changing AWS: raise LockLost unless the lock is ours and its lease is not
        about to end unrenewed (the heartbeat could not reach DynamoDB), by the latest AWS's
        time can be now."""
        self.check()
        margin = min(10, self.lock.lease_seconds / 4)
        if self.lock.store.time.latest() >= self.lease_until - margin:
            raise LockLost(f"could not renew this run's lock before its lease ends at {iso(self.lease_until)}; "
                           "stopping before another run may take it over")

    def check(self) -> None:
        """Raise LockLost if the lock was taken over or broken (state writes are fenced anyway)."""
        if not self.lost:
            return
        if self.taken_by:
            raise LockLost(f"this run's lock was taken over by run {self.taken_by.get('run_id')}; "
                           f"stopping without writing")
        raise LockLost("this run's lock was broken (`orchestrator unlock --force`); stopping without writing")

    def release(self, *writes: dict) -> None:
        """Free the lock if it is still ours, stamping when this run verified the table's
        settings, with `writes` (the run record's end) in the same transaction: they are made
        only if the lock is still ours, and the lock is freed once they are. When that
        transaction fails for another reason (DynamoDB refused one of the writes), the lock is
        freed on its own, saying that the writes were not made. Never raises: a lock already
        gone or taken over is left as is (and the lease marked lost when `writes` were refused
        for it), and one that cannot be freed now expires with its lease. Once freed, a second
        call does nothing."""
        self.stop_heartbeat()
        if self._released:
            return
        store = self.lock.store
        condition = self.condition()
        free = _free_lock(self.table_checked_at)
        freeing = {"TableName": store.table, "Key": store.key(LOCK), "UpdateExpression": free["UpdateExpression"],
                   "ConditionExpression": condition["ConditionExpression"],
                   "ExpressionAttributeNames": {**condition["ExpressionAttributeNames"],
                                                **free["ExpressionAttributeNames"]},
                   "ExpressionAttributeValues": {**condition["ExpressionAttributeValues"],
                                                 **free.get("ExpressionAttributeValues", {})}}
        try:
            if writes:
                eventually(store.client.transact_write_items, retry_if=conflicted, TransactItems=[
                    {"Update": {**freeing, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}, *writes])
            else:
                store.client.update_item(**freeing)
            self._released = True
            log.info("lock released", run_id=self.run_id)
        except (ClientError, BotoCoreError) as error:
            reasons = getattr(error, "response", {}).get("CancellationReasons", [])
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                self.lose(fields(reasons[0].get("Item")))
            elif error_code(error) == "ConditionalCheckFailedException":
                log.info("lock no longer ours; left as is", run_id=self.run_id)
            elif writes:
                log.warning("run record not finished; freeing the lock without it", run_id=self.run_id,
                            error=str(error))
                self.release()
            else:
                log.warning("lock not released; it expires with its lease", run_id=self.run_id,
                            lease_until=iso(self.lease_until), error=str(error))


def conflicted(error: Exception) -> bool:
    """A transaction cancelled only because a concurrent one touched the same item (the lock
    item, which every fenced transaction checks): retried with the one retry policy."""
    if error_code(error) != "TransactionCanceledException":
        return False
    reasons = getattr(error, "response", {}).get("CancellationReasons", [])
    codes = {reason.get("Code") for reason in reasons}
    return "TransactionConflict" in codes and "ConditionalCheckFailed" not in codes


def _free_lock(table_checked_at: float | None = None) -> dict:
    """Update parameters that remove the holder but keep the item: its fencing counter must only
    ever grow, so that a run that lost its lock can never match a later holder's fence."""
    update = {"UpdateExpression": "REMOVE " + ", ".join(f"#h_{name}" for name in HOLDER_FIELDS),
              "ExpressionAttributeNames": {f"#h_{name}": name for name in HOLDER_FIELDS}}
    if table_checked_at is not None:
        update["UpdateExpression"] = f"SET #checked = :checked {update['UpdateExpression']}"
        update["ExpressionAttributeNames"]["#checked"] = "table_checked_at"
        update["ExpressionAttributeValues"] = serialize({":checked": table_checked_at})
    return update


def _ago(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def user() -> str:
    """Who runs this process, as the lock's holder and the run record name them."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"
