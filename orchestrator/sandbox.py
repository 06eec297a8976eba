"""The local sandbox: a moto server on 127.0.0.1 in the background, for offline use.

Its address is recorded in `.orchestrator/sandbox.json` (under the current directory, or
`ORCHESTRATOR_HOME`), so `orchestrator --sandbox …` finds it. The server is started with the
settings that make moto behave like AWS for this platform (each names the moto gap it covers).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from orchestrator.errors import OrchestratorError

#: moto falls short of AWS without these (see MOTO-NOTES.md).
EMULATOR_SETTINGS = {
    # AWS-managed policies (AmazonECSTaskExecutionRolePolicy) are not loaded by default.
    "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
    # Requested certificates otherwise stay PENDING_VALIDATION for 60 s.
    "MOTO_ACM_VALIDATION_WAIT": "0",
    # Services otherwise never report running tasks, so no deployment ever becomes stable.
    "MOTO_ECS_SERVICE_RUNNING": "1",
    # The sandbox has no pipeline pushing the app's images: new repositories hold these tags.
    "ORCHESTRATOR_SANDBOX_IMAGE_TAGS": "1.4.1 1.4.2",
}

#: The setting naming the image tags each new repository holds (`orchestrator.emulator.seed_images`).
SEED_TAGS = "ORCHESTRATOR_SANDBOX_IMAGE_TAGS"

#: Credentials for the sandbox: never a real key, whatever the user's environment holds.
SANDBOX_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox",
                       "AWS_SESSION_TOKEN": "sandbox"}


def home() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_HOME", ".orchestrator"))


def record_path() -> Path:
    return home() / "sandbox.json"


def read_record() -> dict | None:
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return None


def is_alive(record: dict | None) -> bool:
    """The server accepts connections (a cheap check: moto's own pages can take seconds to render)."""
    if not record:
        return False
    address = urllib.parse.urlsplit(record["url"])
    try:
        with socket.create_connection((address.hostname, address.port), timeout=2):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(port: int | None = None, timeout: float = 30.0) -> dict:
    """Start the sandbox unless it already runs; return its record (url, pid, port)."""
    record = read_record()
    if is_alive(record):
        return {**record, "already_running": True}
    port = port or free_port()
    home().mkdir(parents=True, exist_ok=True)
    log_file = open(home() / "sandbox.log", "ab")
    env = {**os.environ, **EMULATOR_SETTINGS}
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.emulator", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    record = {"url": f"http://127.0.0.1:{port}", "pid": process.pid, "port": port, "started_at": time.time()}
    deadline = time.monotonic() + timeout
    while not is_alive(record):
        if process.poll() is not None:
            raise OrchestratorError(f"the sandbox exited at start (code {process.returncode}); "
                                    f"see {home() / 'sandbox.log'}")
        if time.monotonic() > deadline:
            process.terminate()
            raise OrchestratorError(f"the sandbox did not answer within {timeout:.0f}s; see {home() / 'sandbox.log'}")
        time.sleep(0.1)
    record_path().write_text(json.dumps(record))
    return record


def issue_demo_certificates(record: dict, manifests: Path) -> dict[str, str]:
    """Not a moto gap: the sandbox's ACM starts empty, so the certificates the manifests name by
    domain (`load_balancer.certificate.domain`: staging, prod) are requested in it (validated at
    once, `MOTO_ACM_VALIDATION_WAIT=0`), as a real account would hold them; then staging and prod
    apply in the sandbox with no hand work. A domain that already has one is left alone; an
    invalid manifest is skipped (`validate` names its problems). Returns environment → domain."""
    import boto3

    from orchestrator.errors import ManifestError
    from orchestrator.manifest import list_environments, load_manifest
    wanted: dict[str, tuple[str, str]] = {}  # environment → (region, domain)
    try:
        environments = list_environments(manifests)
    except ManifestError:
        return {}
    for environment in environments:
        try:
            manifest = load_manifest(manifests, environment)
        except ManifestError:
            continue
        if manifest.load_balancer.certificate:
            wanted[environment] = (manifest.region, manifest.load_balancer.certificate.domain)
    for region in sorted({region for region, _ in wanted.values()}):
        acm = boto3.client("acm", region_name=region, endpoint_url=record["url"],
                           aws_access_key_id=SANDBOX_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=SANDBOX_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                           aws_session_token=SANDBOX_CREDENTIALS["AWS_SESSION_TOKEN"])
        held = {item["DomainName"] for page in acm.get_paginator("list_certificates").paginate()
                for item in page["CertificateSummaryList"]}
        for domain in sorted({domain for where, domain in wanted.values() if where == region} - held):
            acm.request_certificate(DomainName=domain, ValidationMethod="DNS",
                                    Tags=[{"Key": "orchestrator:sandbox", "Value": "demo certificate"}])
    return {environment: domain for environment, (_, domain) in sorted(wanted.items())}


#: How long `stop` waits for the server to exit after SIGTERM, then after SIGKILL.
STOP_TIMEOUT = 10.0


def stop() -> dict | None:
    """Stop the recorded sandbox and wait until its process is gone and its port closed; return
    its record (with `killed` when it ignored SIGTERM for STOP_TIMEOUT seconds and was killed), or
    None when none was running. A record whose server no longer answers is only removed: its
    pid may belong to another process by now."""
    record = read_record()
    if not record:
        return None
    if not is_alive(record):
        record_path().unlink(missing_ok=True)
        return None
    pid = int(record["pid"])
    _signal(pid, signal.SIGTERM)
    killed = not _wait_until_gone(pid, record, STOP_TIMEOUT)
    if killed:
        _signal(pid, signal.SIGKILL)
        if not _wait_until_gone(pid, record, STOP_TIMEOUT):
            raise OrchestratorError(f"the sandbox (pid {pid}) still runs after SIGKILL; stop it by hand")
    record_path().unlink(missing_ok=True)
    return {**record, "killed": killed}


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_until_gone(pid: int, record: dict, timeout: float) -> bool:
    """True once the process has exited and nothing listens on the port, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while _process_exists(pid) or is_alive(record):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _process_exists(pid: int) -> bool:
    try:  # reap it if this process started it (a zombie still answers signal 0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def endpoint() -> str:
    """The running sandbox's URL, or a clear error telling how to start it."""
    record = read_record()
    if not is_alive(record):
        raise OrchestratorError("the sandbox is not running: start it with `orchestrator sandbox start`")
    return record["url"]
