"""What a step sees while it observes and applies: clients, tags, tokens, waits, logging."""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.aws import Aws
from orchestrator.log import get_logger, redactor

#: In the thread making a change: the keys of the earlier changes whose waits its handler's
#: `settle` takes (see `StepContext.making`); None: every pending wait.
_needs: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("needs", default=None)


@dataclass
class StepContext:
    aws: Aws
    manifest: object  # orchestrator.schema.Manifest
    step: str
    #: Flags the user passed that unlock guarded changes, e.g. {"delete-data"}.
    allow: frozenset[str] = frozenset()
    #: True when observing for `destroy`: facts only a delete needs (does a bucket hold objects?)
    #: are read then, and for resources the manifest no longer wants, but not on every apply.
    destroying: bool = False
    #: Raises when the step must stop at once (Ctrl-C, the lock lost); called between polls.
    stop: Callable[[], None] = lambda: None
    log: object = field(default=None)
    #: Waits of changes AWS accepted and the engine recorded, not settled yet: (the key of the
    #: change it settles, the wait).
    pending: list = field(default_factory=list)
    #: The step's last-applied records (`Change.key` → record), as `plan` gets them: observe may
    #: skip a read that a record makes needless (a task definition proven unchanged by its hash).
    recorded: dict = field(default_factory=dict)
    #: This run's id: idempotency tokens are this run's, so a retry within the run is one request
    #: to AWS, and a later run (after a destroy, say) never meets a token AWS remembers.
    run_id: str = ""
    #: Called before any wait is settled (the engine writes the records of the changes accepted
    #: so far, in one write: a wait never stands between a change and its record).
    before_settle: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = get_logger("orchestrator.step").bind(step=self.step)
        self._pending_lock = threading.Lock()  # `pending`, shared by the threads making changes
        self._settling = threading.Lock()  # one settle at a time: a wait two changes need is polled once
        self._failed: dict[str, BaseException] = {}  # change key → how settling its waits failed

    def client(self, service: str):
        return self.aws.client(service)

    def each(self, service: str, read, items) -> list:
        """`[read(item) for item in items]`, reads of `service` at once (`Aws.each`)."""
        return self.aws.each(service, read, items)

    @property
    def app(self) -> str:
        return self.manifest.app

    @property
    def env(self) -> str:
        return self.manifest.environment

    @property
    def region(self) -> str:
        return self.manifest.region

    def tags(self) -> dict[str, str]:
        """The ownership tags for everything this step creates, plus the manifest's tags."""
        return tagging.ownership_tags(self.app, self.env, self.step, self.manifest.tags)

    def owns(self, tags: dict[str, str]) -> bool:
        """The resource carries this environment's ownership tags for this step."""
        return tagging.is_owned(tags, self.app, self.env, self.step)

    def token(self, logical: str, salt: str = "", *, stable: bool = False) -> str:
        """An idempotency token derived from this run, app, env, step and the resource's
        logical name: botocore's retry of a create whose answer was lost sends the same token,
        and AWS answers with what the first request made instead of making a second one.

        `salt` distinguishes a deliberate re-creation (a replacement) from a retry of the same
        create. `stable` leaves the run out, for a token that is also the resource's key across
        runs (an EFS file system's CreationToken, by which observe finds it). 32 hex characters
        fit every API's token limit (EFS allows 64, EC2 64, ECS 36).
        """
        run = "" if stable else self.run_id
        basis = f"{self.app}/{self.env}/{self.step}/{logical}/{salt}/{run}"
        return hashlib.sha256(basis.encode()).hexdigest()[:32]

    def add_waits(self, key: str, waits) -> None:
        """The waits that settle the change with this key, pending until a settle takes them."""
        with self._pending_lock:
            self.pending.extend((key, wait) for wait in waits)

    @contextlib.contextmanager
    def making(self, change) -> Iterator[None]:
        """While `change`'s handler runs (in this thread): what its `settle` takes. A change that
        names what it needs (`Change.after`) waits only for those changes and the earlier ones of
        its own key (a replace's delete); one that names none, for every earlier change."""
        token = _needs.set(change.needs)
        try:
            yield
        finally:
            _needs.reset(token)

    @property
    def settling(self) -> bool:
        """A handler is settling waits now (the engine writes records accepted meanwhile at once)."""
        return self._settling.locked()

    def settle(self) -> None:
        """Settle now the pending waits the change being made needs (`making`): a handler whose
        change needs an earlier one done (a route to a NAT gateway that must be available, a
        mount target on a new file system) calls this first. The waits of changes it does not
        depend on stay pending: they do not hold it up. The records of the changes accepted so
        far are written first (`before_settle`), even with nothing pending: a handler calls this
        before it waits in other ways too (a delete retried while in use). Handlers making
        changes at once settle one after another; a wait that failed stays pending, and a change
        that needs it too fails on the same error at once, without waiting it out again."""
        needs = _needs.get()
        with self._settling:
            self.before_settle()
            with self._pending_lock:
                taken = [(key, wait) for key, wait in self.pending if needs is None or key in needs]
                self.pending = [(key, wait) for key, wait in self.pending if needs is not None and key not in needs]
            if not taken:
                return
            try:
                failed = next((self._failed[key] for key, _ in taken if key in self._failed), None)
                if failed is not None:
                    raise failed
                waiters.settle([wait for _, wait in taken], log=self.log, stop=self.stop)
            except BaseException as error:
                with self._pending_lock:
                    self.pending = taken + self.pending
                    for key, _ in taken:
                        self._failed.setdefault(key, error)
                raise

    def trusts_listed_tags(self, wanted: bool) -> bool:
        """Whether a resource's tags as the tagging API lists them may stand for its own: only for
        one the manifest wants, outside a destroy. The API lags by seconds to minutes, and a
        delete (destroy, or removal from the manifest) never rests on tags that may since have
        changed: those resources have their own tags read."""
        return wanted and not self.destroying

    @staticmethod
    def secret(value: str) -> str:
        """Register a secret value so that no log line or error can ever show it."""
        redactor.register(value)
        return value
