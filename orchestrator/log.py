"""structlog set-up: readable lines on a terminal, one JSON object per line for CI.

Every event passes the redactor first: any value registered as a secret is replaced wherever
it appears, so a secret that slips into an error message still never reaches the output.

structlog is imported at the first event that is shown, not before: a `plan` of an applied
environment usually shows none at the default level (its events are `-v`'s debug "aws call"
lines, and warnings when something is amiss), and importing structlog
loads asyncio and some 60 modules a plan needs for nothing else: 2 % of a plan's CPU
instructions (~10 ms). So the modules log through `get_logger`'s `Logger`, which drops a debug
event at once while `configure` has set INFO and structlog is not loaded yet, and hands any
other event to structlog, set up then as `configure` asked.
"""
from __future__ import annotations

import functools
import logging
import sys
import threading
from dataclasses import dataclass

from orchestrator.model import SENSITIVE


class Redactor:
    """Knows every secret value this process has handled and masks it in any text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        if value and len(value) >= 4:
            with self._lock:
                self._values.add(value)

    def clean(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, SENSITIVE)
        return text

    def __call__(self, _logger, method, event: dict) -> dict:
        return {key: self._clean_value(value) for key, value in event.items()}

    def _clean_value(self, value):
        if isinstance(value, str):
            return self.clean(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._clean_value(v) for v in value)
        if isinstance(value, dict):
            return {k: self._clean_value(v) for k, v in value.items()}
        if isinstance(value, BaseException):
            return self.clean(str(value))
        return value


redactor = Redactor()

_FIELDS_FIRST = ("step", "what", "kind", "name")


def _console(_logger, method, event: dict) -> str:
    """`12:00:01 vpc        waiting  what=nat gateway public-a status=pending waited_s=4.0`"""
    stamp = event.pop("timestamp", "")
    step = event.pop("step", "")
    message = event.pop("event", "")
    level = event.pop("level", "info")
    event.pop("logger", None)
    ordered = [k for k in _FIELDS_FIRST if k in event] + sorted(k for k in event if k not in _FIELDS_FIRST)
    fields = " ".join(f"{key}={_show(event[key])}" for key in ordered)
    marker = {"warning": "WARN ", "error": "ERROR "}.get(level, "")
    return f"{stamp} {step:<10} {marker}{message}{'  ' + fields if fields else ''}".rstrip()


def _show(value) -> str:
    text = str(value)
    return f'"{text}"' if " " in text else text


@dataclass(frozen=True)
class _Setup:
    """What `configure` asked for, kept until structlog is needed."""
    fmt: str
    verbose: bool
    stream: object


#: The set-up `configure` recorded and structlog has not been given yet (it is not loaded);
#: None before `configure`, and once structlog has it.
_waiting: _Setup | None = None
_setting_up = threading.Lock()


def configure(fmt: str = "console", verbosity: int = 0, stream=None) -> None:
    """Log as `fmt` to `stream` (stderr by default), debug events too when `verbosity` > 0.

    structlog is set up at once if it is already loaded (a test's `capture_logs` then keeps
    working on top of this set-up, as it always did); else at the first event shown."""
    global _waiting
    setup = _Setup(fmt, verbosity > 0, stream or sys.stderr)
    with _setting_up:
        if "structlog" in sys.modules:
            _waiting = None
            _set_up_structlog(setup)
        else:
            _waiting = setup


def _set_up_structlog(setup: _Setup) -> None:
    import structlog
    renderer = structlog.processors.JSONRenderer() if setup.fmt == "json" else _console
    timestamper = structlog.processors.TimeStamper(fmt="iso" if setup.fmt == "json" else "%H:%M:%S",
                                                   utc=setup.fmt == "json")
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    timestamper, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if setup.verbose else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=setup.stream),
        cache_logger_on_first_use=False,
    )


def _structlog():
    """structlog, given the set-up `configure` recorded if it has not had it yet."""
    global _waiting
    import structlog
    if _waiting is not None:
        with _setting_up:
            if _waiting is not None:
                _set_up_structlog(_waiting)
                _waiting = None
    return structlog


def get_logger(name: str) -> Logger:
    """The logger of the modules: `get_logger("orchestrator.engine")` as structlog's, without
    loading structlog for events that are not shown."""
    return Logger(name)


class Logger:
    """structlog's `get_logger(name)`, fetched at each event shown: so the event goes through
    structlog's configuration of that moment, as with structlog's own lazy logger. A debug event
    while `configure`'s INFO level waits for structlog is dropped here. Before `configure` (tests
    running code in-process) every event goes to structlog, so `capture_logs` sees them all."""

    __slots__ = ("_name", "_context")

    def __init__(self, name: str, context: dict | None = None) -> None:
        self._name = name
        self._context = context or {}

    def bind(self, **values) -> Logger:
        return Logger(self._name, {**self._context, **values})

    def debug(self, event: str, *args, **fields) -> None:
        setup = _waiting
        if setup is not None and not setup.verbose:
            return
        self._emit("debug", event, *args, **fields)

    def __getattr__(self, method: str):
        """Every other method of structlog's logger (info, warning, error, exception, ...), called
        on it as the event is logged."""
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self._emit, method)

    def _emit(self, method: str, event: str, *args, **fields) -> None:
        logger = _structlog().get_logger(self._name)
        if self._context:
            logger = logger.bind(**self._context)
        getattr(logger, method)(event, *args, **fields)
