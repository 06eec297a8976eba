"""Test-only: on the PYTHONPATH of a command line a test runs (tests/test_log.py), it prints, as
the process ends, whether structlog was loaded, as the last line of stdout."""
import atexit
import sys


@atexit.register
def _say_whether_structlog_was_loaded() -> None:
    print(f"structlog loaded: {'structlog' in sys.modules}", flush=True)
