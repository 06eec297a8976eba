"""The one AWS client factory, and the call ledger that counts every request per step.

Region and profile come from the manifest or the usual AWS variables; `endpoint_url` (or
`AWS_ENDPOINT_URL`) sends every service to an emulator. botocore's standard retry mode handles
transient errors and throttling inside each call; `orchestrator.retry` adds the bounded retries
for eventual consistency.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TypeVar

from orchestrator.log import get_logger

log = get_logger("orchestrator.aws")

#: Which step the current thread is working for; the ledger files each call under it.
current_step: contextvars.ContextVar[str] = contextvars.ContextVar("current_step", default="engine")

#: The ledger's name for calls to the state table and lock, whichever step causes them.
STATE = "state"
#: The ledger's name for the run facts (account, partition, zones), asked once per run.
FACTS = "facts"

#: Reads of one service a run keeps in flight at once (`Aws.each`), below what AWS throttles.
#: AWS meters each account and region with token buckets (one per API or group of APIs): a burst
#: of reads spends tokens that refill at a sustained rate. A step's reads are a burst of tens, so
#: a few in flight at 50-200 ms a round trip stay well inside the documented buckets, leaving
#: room for the other tools of the account; botocore's standard retry absorbs a throttle left.
#: - ec2: 100 tokens for non-mutating actions, 20 a second (EC2 API reference, "Request
#:   throttling for the Amazon EC2 API").
#: - ecs: 50 tokens for cluster and service reads, 20 a second sustained (ECS developer guide,
#:   "Request throttling for the Amazon ECS API").
#: - s3: 5,500 GET/HEAD a second per prefix (S3 user guide, "Best practices design patterns:
#:   optimizing Amazon S3 performance"); the bucket-settings reads are far below.
#: - iam: IAM publishes no numbers; it throttles per account, globally, across every tool and
#:   region of the account (AWS Security Blog, "How to monitor and query IAM resources at scale
#:   - Part 2"), so it gets the smallest bound.
#: Any other service: DEFAULT_CONCURRENCY.
CONCURRENCY = {"ec2": 8, "ecs": 8, "s3": 8, "iam": 4}
DEFAULT_CONCURRENCY = 4
#: `Aws.each`'s name for a few reads each of a different service (a step's kinds of resource):
#: each then has one or two calls in flight to its own service; DEFAULT_CONCURRENCY bounds them,
#: per batch (not across the run: each batch's services differ).
SEVERAL_SERVICES = "several services"

Item = TypeVar("Item")
Result = TypeVar("Result")

READ_PREFIXES = ("Describe", "Get", "List", "Head", "BatchGet", "Query", "Scan", "Lookup", "Discover",
                 "Search", "Select", "Check")


def is_mutating(operation: str) -> bool:
    return not operation.startswith(READ_PREFIXES)


@dataclass(frozen=True)
class Call:
    step: str
    service: str
    operation: str

    @property
    def mutating(self) -> bool:
        return is_mutating(self.operation)


class CallLedger:
    """Counts each API request as it leaves (retries included), filed under the current step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    def record(self, service: str, operation: str, step: str | None = None) -> None:
        with self._lock:
            self.calls.append(Call(step or current_step.get(), service, operation))

    def count(self, *, step: str | None = None, mutating: bool | None = None) -> int:
        return sum(1 for call in self.calls
                   if (step is None or call.step == step) and (mutating is None or call.mutating == mutating))


class Aws:
    """Hands out one botocore client per service, shared by all threads (clients are thread-safe;
    sessions are not, so clients are built under a lock)."""

    def __init__(self, region: str, profile: str | None = None, endpoint_url: str | None = None,
                 max_attempts: int = 6):
        # urllib3 first, from here, rather than nine imports deep inside botocore's: importing it
        # compiles its URL regular expressions, a deep recursion, and CPython gives each thread's
        # frames 16 KiB blocks that it unmaps as soon as the stack shrinks back out of one. Nine
        # imports deeper, that recursion straddled a block's edge: a plan mapped and unmapped a
        # block ~2,700 times (and took as many page faults), here ~60.
        import urllib3  # noqa: F401
        import botocore.session
        from botocore.config import Config

        from orchestrator import service_models

        self.region = region
        self.endpoint_url = endpoint_url
        # botocore's own session, as boto3 would make it (boto3 adds nothing a client of ours uses,
        # and its import costs every command CPU); its data loader is ours (service_models).
        self._session = botocore.session.Session(profile=profile)
        self._session.register_component("data_loader", service_models.loader(
            self._session.get_config_variable("data_path"), service_models.cache_folder()))
        self._config = Config(retries={"mode": "standard", "max_attempts": max_attempts},
                              connect_timeout=10, read_timeout=60, max_pool_connections=32,
                              user_agent_extra="gamepulse-orchestrator")
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()
        self.ledger = CallLedger()
        self._handlers: list[tuple[str, object]] = []
        self._identity: dict | None = None
        self._zones: dict[str, str] | None = None
        self._endpoint_zones: dict[tuple[str, ...], dict[str, list[str]]] = {}
        # One lock per run fact: steps asking for the same fact wait for its one read, and the
        # facts are read at once (the account at start-up, the zones and endpoint services by vpc).
        self._identity_lock, self._zones_lock, self._endpoints_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._in_each = threading.local()

    def client(self, service: str, *, ledger_name: str | None = None):
        """The shared client for `service`. With `ledger_name`, a client of its own whose calls
        the ledger files under that name instead of the current step (the state store's)."""
        key = (service, ledger_name)
        client = self._clients.get(key)  # made once: the steps need not queue behind another's new client
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._session.create_client(service, region_name=self.region, config=self._config,
                                                     endpoint_url=self.endpoint_url)
                client.meta.events.register("before-send", self._counter_for(ledger_name))
                client.meta.events.register("provide-client-params", refuse_unknown_values)
                for event, handler in self._handlers:
                    client.meta.events.register(event, handler)
                self._clients[key] = client
            return client

    def register(self, event: str, handler) -> None:
        """Hook a botocore event on every client, present and future (the call ledger uses
        this; tests inject faults with it)."""
        with self._lock:
            self._handlers.append((event, handler))
            for client in self._clients.values():
                client.meta.events.register(event, handler)

    def _counter_for(self, ledger_name: str | None):
        def count_request(request, **kwargs) -> None:
            # before-send fires once per attempt, so retried requests are counted as AWS sees them.
            event = kwargs.get("event_name", "before-send.unknown.Unknown").split(".")
            self.ledger.record(event[1], event[2], ledger_name)
            log.debug("aws call", step=ledger_name or current_step.get(), service=event[1], operation=event[2])
        return count_request

    # -- independent reads at once -------------------------------------------------------------

    def each(self, service: str, read: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
        """`[read(item) for item in items]`, with up to the service's bound (CONCURRENCY) of the
        reads in flight at once across the run: for a step's reads that do not depend on each
        other (each role's policies, each bucket's settings). Results keep the items' order.
        `service` is the AWS service the reads call, or SEVERAL_SERVICES: a few reads each of a
        different service, bounded by DEFAULT_CONCURRENCY within the batch.

        When reads fail, the first failing item's exception is raised, as the loop would have
        raised it; reads not started yet are dropped. A `read` that itself calls `each` (for any
        service) runs those reads one after another, so that no read waits for a slot while
        holding one."""
        items = list(items)
        limit = CONCURRENCY.get(service, DEFAULT_CONCURRENCY)
        if len(items) < 2 or limit < 2 or getattr(self._in_each, "active", False):
            return [read(item) for item in items]
        # A batch of several services is bounded by its own pool alone: its items call different
        # services, a call or two each, so a bound shared by the run would only queue one step's
        # batch behind another's (dashboards' key read waited 450 ms for a slot at 200 ms a call).
        slots = contextlib.nullcontext() if service == SEVERAL_SERVICES else self._slots_of(service, limit)

        def one(item):
            with slots:
                self._in_each.active = True
                try:
                    return read(item)
                finally:
                    self._in_each.active = False

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix=f"each-{service}") as pool:
            # Each read runs in a copy of the caller's context: the ledger files its calls under the step.
            futures = [pool.submit(contextvars.copy_context().run, one, item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _slots_of(self, service: str, limit: int) -> threading.BoundedSemaphore:
        with self._lock:
            return self._slots.setdefault(service, threading.BoundedSemaphore(limit))

    # -- run facts: asked once per run, shared by the steps running at once --------------------

    def account_id(self) -> str:
        """The credentials' account."""
        return self._caller()["Account"]

    def partition(self) -> str:
        """The partition of the credentials (`aws`, `aws-cn`, `aws-us-gov`), which every ARN names."""
        return self._caller()["Arn"].split(":")[1]

    def available_zones(self) -> list[str]:
        """The region's availability zones that exist and are available to this account, in
        name order (many accounts lack some letters, e.g. us-west-1 has two of a, b, c)."""
        return sorted(self._zone_ids())

    def zone_ids(self) -> dict[str, str]:
        """Zone name → zone id (`use1-az1`): names are mapped per account, ids are the same
        physical zone in every account (what AWS's per-zone support tables name)."""
        return dict(self._zone_ids())

    def _zone_ids(self) -> dict[str, str]:
        with self._zones_lock:
            if self._zones is None:
                found = self._as_facts(self.client("ec2").describe_availability_zones, Filters=[
                    {"Name": "zone-type", "Values": ["availability-zone"]},
                    {"Name": "state", "Values": ["available"]}])["AvailabilityZones"]
                self._zones = {zone["ZoneName"]: zone.get("ZoneId", "") for zone in found}
            return self._zones

    def endpoint_service_zones(self, service_names: tuple[str, ...]) -> dict[str, list[str]]:
        """Per endpoint service name (`com.amazonaws.REGION.logs`), the zones it is offered in
        (a service the region does not offer at all is absent). Read once per run."""
        if not service_names:
            return {}
        with self._endpoints_lock:
            if service_names not in self._endpoint_zones:
                def read() -> dict[str, list[str]]:
                    pages = self.client("ec2").get_paginator("describe_vpc_endpoint_services").paginate(
                        ServiceNames=list(service_names))
                    return {detail["ServiceName"]: list(detail.get("AvailabilityZones", []))
                            for page in pages for detail in page["ServiceDetails"]}
                self._endpoint_zones[service_names] = self._as_facts(read)
            return dict(self._endpoint_zones[service_names])

    def _caller(self) -> dict:
        with self._identity_lock:
            if self._identity is None:
                self._identity = self._as_facts(self.client("sts").get_caller_identity)
            return self._identity

    @staticmethod
    def _as_facts(call, **params):
        """`call(**params)` filed under FACTS in the ledger, through the service's shared client
        (a client of its own would cost its creation again: milliseconds of CPU each)."""
        token = current_step.set(FACTS)
        try:
            return call(**params)
        finally:
            current_step.reset(token)


class UnknownValueSent(Exception):
    """A request still holds a value known only after an upstream apply: a bug, never sent."""


def refuse_unknown_values(params, model, **kwargs) -> None:
    """Refuse a request that holds a value not known yet (`orchestrator.model.Unknown`, or a
    string built from one), naming the step, the field and the output it waited for."""
    from orchestrator.model import is_unknown

    def find(value, path: str):
        if is_unknown(value):
            return path, getattr(value, "source", "") or "an upstream output"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            found = find(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
            if found:
                return found
        return None

    found = find(params, "")
    if found:
        field, source = found
        raise UnknownValueSent(f"step {current_step.get()}: {model.name} would send {field.lstrip('.')} before "
                               f"{source} is known (the step read it before the step that makes it applied)")


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ClientError, or '' for anything else."""
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def unless_code(codes: Collection[str], fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, or None when it raises a ClientError whose code is in `codes`: a
    resource that is already gone, a setting that is not there."""
    from botocore.exceptions import ClientError

    try:
        return fn(*args, **kwargs)
    except ClientError as error:
        if error_code(error) in codes:
            return None
        raise
