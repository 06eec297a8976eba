"""A moto server subprocess with the settings the sandbox uses, for the end-to-end tests."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from tests.conftest import FAKE_ENV


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start the emulator on a free loopback port; yield its URL; stop it afterwards."""
    from orchestrator import sandbox
    port = sandbox.free_port()
    env = {**os.environ, **FAKE_ENV, **sandbox.EMULATOR_SETTINGS}
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.emulator", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not sandbox.is_alive({"url": url}):
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # on a loaded machine it may not get the CPU to exit in time
            process.kill()
            process.wait()
