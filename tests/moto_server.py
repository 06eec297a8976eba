"""moto for the tests: the emulator (orchestrator/emulator.py, the sandbox's fixes for moto's gaps)
plus what only makes the tests faster and changes nothing a test can see:

- `load_managed_policies_once`: AWS-managed IAM policies only where a test can meet them;
- `Snapshots`: moto's whole state (every backend, the state table in DynamoDB included) saved
  and put back, so that a test that needs "dev applied" starts from a real cold `apply dev`
  made once, instead of making its own;
- `watch_requests`: in-process, a look at moto's state right after it served a request (the
  crash tests save it there: the state a run killed right after that call leaves).

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


#: Called as `watcher(event_name, response)` after moto served each in-process request (event
#: name as botocore's: "before-send.<service id>.<Operation>"), while no other request is served.
WATCHERS: list[Callable] = []


def watch_requests() -> None:
    """Call the WATCHERS after each in-process request. Patched in before the emulator's fixes,
    so that the emulator's lock (one request at a time) holds while they run: what they see is
    moto's state right after that request, with nothing served since."""
    from moto.core.botocore_stubber import BotocoreStubber

    original = BotocoreStubber.__call__

    def call(self, event_name, request, **kwargs):
        response = original(self, event_name, request, **kwargs)
        if response is not None:
            for watcher in list(WATCHERS):
                watcher(event_name, response)
        return response

    BotocoreStubber.__call__ = call


class Snapshots:
    """moto's state by name: `save(name)` pickles every backend moto holds (all services, accounts
    and regions); `restore(name)` puts an independent copy of it back in place of the current state,
    as moto's own reset does (moto keeps everything in its backends). The same objects stay shared
    as they were (e.g. a load balancer's subnets are the EC2 backend's); what `_referenced` names
    is shared with the live state, not copied."""

    def __init__(self):
        self._saved: dict[str, bytes] = {}

    def save(self, name: str) -> None:
        from moto.core.base_backend import BackendDict
        buffer = io.BytesIO()
        _Pickler(buffer).dump([(backends, dict(backends)) for backends in BackendDict._instances])
        self._saved[name] = buffer.getvalue()

    def restore(self, name: str) -> None:
        from moto.core.base_backend import BackendDict
        from moto.core.model_instances import reset_model_data
        state = pickle.loads(self._saved[name])
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

#: Objects a snapshot refers to instead of copying, by id (kept alive here).
_SHARED: dict[int, object] = {}


def _shared(key: int) -> object:
    return _SHARED[key]


def _referenced(obj) -> bool:
    """What a snapshot shares with the live state instead of copying: moto's module-level
    backend tables (the state lives in what they hold), private keys (immutable, and not
    picklable), and moto's catalogue of public AMIs (1 MB of every EC2 backend's 1.2; nothing in
    the platform reads or changes an AMI)."""
    from moto.core.base_backend import BackendDict
    from moto.ec2.models.amis import Ami
    return isinstance(obj, (BackendDict, Ami)) or type(obj).__module__.startswith("cryptography.")


class _Pickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)

    def reducer_override(self, obj):
        if type(obj) in _LOCKS:  # a lock guards the copy it is in, held by nobody
            return _LOCKS[type(obj)], ()
        if _referenced(obj):
            _SHARED[id(obj)] = obj
            return _shared, (id(obj),)
        return NotImplemented


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
