"""Test-only: on the PYTHONPATH of a command line a test runs (tests/test_log.py,
tests/test_kept_rendering.py), it prints, as the process ends, whether each module that
IMPORT_PROBE names (comma-separated; structlog when unset) was loaded, one line each, the last
lines of stdout."""
import atexit
import os
import sys


@atexit.register
def _say_whether_the_modules_were_loaded() -> None:
    for name in os.environ.get("IMPORT_PROBE", "structlog").split(","):
        print(f"{name} loaded: {name in sys.modules}", flush=True)
