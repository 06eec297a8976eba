"""structlog set-up: readable lines on a terminal, one JSON object per line for CI.

Every event passes the redactor first: any value registered as a secret is replaced wherever
it appears, so a secret that slips into an error message still never reaches the output.
"""
from __future__ import annotations

import logging
import sys
import threading

import structlog

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


def configure(fmt: str = "console", verbosity: int = 0, stream=None) -> None:
    stream = stream or sys.stderr
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else _console
    timestamper = structlog.processors.TimeStamper(fmt="iso" if fmt == "json" else "%H:%M:%S",
                                                   utc=fmt == "json")
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    timestamper, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
