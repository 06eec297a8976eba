"""moto for the tests: the emulator (orchestrator/emulator.py, the sandbox's fixes for moto's gaps)
plus two things that only make the tests faster and change nothing a test can see:

- `load_managed_policies_once`: AWS-managed IAM policies only where a test can meet them;
- `Snapshots`: moto's whole state (every backend, the state table in DynamoDB included) saved
  and put back, so that a test that needs "dev applied" starts from a real cold `apply dev`
  made once, instead of making its own.

`moto_server()` runs the emulator with both as a subprocess (`python -m tests.moto_server`);
in-process tests (`mock_aws`) get them from conftest."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_managed_policies_once() -> None:
    """moto parses its ~1,600 AWS-managed policies for the IAM backend of each of its six
    partitions, at the first request after every reset (the first request looks up the caller's
    access key in every partition): 1.5-2 s a test. Load them only for the `aws` partition, the
    only one these tests (us-east-1) use, from JSON parsed once; the other partitions hold none."""
    from moto.iam.models import AWSManagedPolicy, IAMBackend, aws_managed_policies_data
    from moto.settings import load_iam_aws_managed_policies

    parsed: dict = {}

    def init_aws_policies(self) -> list:
        if self.region_name != "aws" or not load_iam_aws_managed_policies():
            return []
        if not parsed:
            parsed.update(json.loads(aws_managed_policies_data))
        return [AWSManagedPolicy.from_data(name, self.account_id, self.region_name, data)
                for name, data in parsed.items()]

    IAMBackend._init_aws_policies = init_aws_policies


class Snapshots:
    """moto's state by name: `save(name)` pickles every backend moto holds (all services, accounts
    and regions); `restore(name)` puts an independent copy of it back in place of the current state,
    as moto's own reset does (moto keeps everything in its backends). The same objects stay shared
    as they were (e.g. a load balancer's subnets are the EC2 backend's). Objects that cannot be
    pickled and never change (moto's module-level backend tables, private keys) are referenced,
    not copied."""

    def __init__(self):
        self._saved: dict[str, tuple[bytes, list]] = {}

    def save(self, name: str) -> None:
        from moto.core.base_backend import BackendDict
        shared: list = []
        buffer = io.BytesIO()
        _Pickler(buffer, shared).dump([(backends, dict(backends)) for backends in BackendDict._instances])
        self._saved[name] = (buffer.getvalue(), shared)

    def restore(self, name: str) -> None:
        from moto.core.base_backend import BackendDict
        from moto.core.model_instances import reset_model_data
        data, shared = self._saved[name]
        state = _Unpickler(io.BytesIO(data), shared).load()
        for backends in BackendDict._instances:
            backends.clear()
        BackendDict._instances.clear()
        reset_model_data()
        for backends, accounts in state:
            backends.update(accounts)
            BackendDict._instances.append(backends)

    def __contains__(self, name: str) -> bool:
        return name in self._saved


_LOCKS = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


class _Pickler(pickle.Pickler):
    def __init__(self, file, shared: list):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared = shared

    def persistent_id(self, obj):
        from moto.core.base_backend import BackendDict
        if isinstance(obj, BackendDict) or type(obj).__module__.startswith("cryptography."):
            self.shared.append(obj)
            return len(self.shared) - 1
        return None

    def reducer_override(self, obj):
        if type(obj) in _LOCKS:  # a lock guards the copy it is in, held by nobody
            return _LOCKS[type(obj)], ()
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, shared: list):
        super().__init__(file)
        self.shared = shared

    def persistent_load(self, pid):
        return self.shared[pid]


def serve_snapshots(snapshots: Snapshots) -> None:
    """Two endpoints on the test server: POST /_tests/snapshot/NAME saves moto's state, POST
    /_tests/restore/NAME puts it back (404 for a name never saved). Patched in before the
    emulator's fixes, so that they too are served one request at a time."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__
    actions: dict[str, Callable[[str], None]] = {"snapshot": snapshots.save, "restore": snapshots.restore}

    def call(self, environ, start_response):
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        if len(parts) != 3 or parts[0] != "_tests" or parts[1] not in actions:
            return original(self, environ, start_response)
        action, name = parts[1], parts[2]
        if action == "restore" and name not in snapshots:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"no snapshot {name!r}".encode()]
        actions[action](name)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    DomainDispatcherApplication.__call__ = call


def snapshot(url: str, name: str) -> None:
    """Save the test server's state as `name`."""
    _post(f"{url}/_tests/snapshot/{name}")


def restore(url: str, name: str) -> None:
    """Put the test server's state back to what `snapshot(url, name)` saved."""
    _post(f"{url}/_tests/restore/{name}")


def reset(url: str) -> None:
    """moto's own reset: a new, empty account."""
    _post(f"{url}/moto-api/reset")


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST")).read()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start the emulator on a free loopback port; yield its URL; stop it afterwards."""
    from orchestrator import sandbox
    from tests.conftest import FAKE_ENV
    port = sandbox.free_port()
    env = {**os.environ, **FAKE_ENV, **sandbox.EMULATOR_SETTINGS}
    process = subprocess.Popen([sys.executable, "-m", "tests.moto_server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not sandbox.is_alive({"url": url}):
            assert process.poll() is None, f"moto server exited with {process.returncode}"
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


def main() -> None:
    """The emulator as the sandbox runs it, with the tests' two additions; moto_server's arguments."""
    from moto.server import main as moto_main

    from orchestrator.emulator import apply_fixes
    serve_snapshots(Snapshots())
    load_managed_policies_once()
    apply_fixes()
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
