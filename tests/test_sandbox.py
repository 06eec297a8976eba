"""`sandbox stop`: it returns only once the server's process is gone and its port closed."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import sandbox
from orchestrator.cli import cli

# A stand-in server: listens on the port, and on SIGTERM either closes the port and lingers a
# moment before its process exits (as the moto server does) or ignores the signal altogether.
SERVER = """
import signal, socket, sys, time
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
def linger(*_):
    listener.close()
    time.sleep(0.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "ignore" else linger)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def server(home):
    """Starts a stand-in server recorded as the sandbox; kills whatever is left at the end."""
    started = []

    def start(on_term: str) -> subprocess.Popen:
        port = sandbox.free_port()
        process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), on_term])
        started.append(process)
        record = {"url": f"http://127.0.0.1:{port}", "pid": process.pid, "port": port, "started_at": time.time()}
        while not sandbox.is_alive(record):
            assert process.poll() is None, "the stand-in server did not start"
            time.sleep(0.05)
        sandbox.record_path().write_text(json.dumps(record))
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_stop_returns_once_the_process_is_gone_and_the_port_closed(server):
    process = server("linger")
    record = sandbox.read_record()
    stopped = sandbox.stop()
    assert stopped["killed"] is False
    assert process.poll() is not None, "stop returned while the server still ran"
    assert not sandbox.is_alive(record)
    assert sandbox.read_record() is None


def test_a_server_that_ignores_sigterm_is_killed_and_stop_says_so(server, monkeypatch):
    monkeypatch.setattr(sandbox, "STOP_TIMEOUT", 0.5)
    process = server("ignore")
    result = CliRunner().invoke(cli, ["sandbox", "stop"])
    assert result.exit_code == 0, result.output
    assert "did not stop when asked, so it was killed; it is stopped" in result.output
    assert process.poll() is not None
    assert sandbox.read_record() is None


def test_a_record_of_a_server_gone_long_ago_signals_nothing(home):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # its pid is in the record, as if the system had reused the old server's pid
        sandbox.record_path().write_text(json.dumps(
            {"url": f"http://127.0.0.1:{sandbox.free_port()}", "pid": bystander.pid, "port": 1}))
        result = CliRunner().invoke(cli, ["sandbox", "stop"])
        assert "no sandbox was running" in result.output
        assert bystander.poll() is None
        assert sandbox.read_record() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_start_issues_demo_certificates_so_staging_and_prod_plan_with_no_hand_work(home):
    """The real sandbox, as a new user starts it: its ACM holds an ISSUED certificate for each
    domain the manifests name, and it says which image tags it holds."""
    import os

    import boto3

    from tests.conftest import FAKE_ENV, MANIFESTS
    cli_path = str(Path(sys.executable).parent / "orchestrator")
    env = {**os.environ, **FAKE_ENV, "ORCHESTRATOR_HOME": str(home), "ORCHESTRATOR_MANIFESTS": str(MANIFESTS)}
    started = subprocess.run([cli_path, "sandbox", "start"], capture_output=True, text=True, env=env, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert ("its ACM holds demo certificates for play.gamepulse.example.com (prod), "
                "staging.gamepulse.example.com (staging)") in started.stdout
        assert "each new image repository holds the demo tags 1.4.1 1.4.2" in started.stdout
        acm = boto3.client("acm", region_name="us-east-1", endpoint_url=sandbox.read_record()["url"])
        issued = {item["DomainName"] for item in acm.list_certificates(CertificateStatuses=["ISSUED"])[
            "CertificateSummaryList"]}
        assert issued == {"play.gamepulse.example.com", "staging.gamepulse.example.com"}
        for environment in ("staging", "prod"):
            planned = subprocess.run([cli_path, "--sandbox", "plan", environment], capture_output=True, text=True,
                                     env=env, timeout=120)
            assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
            assert "PROBLEM" not in planned.stdout
        again = subprocess.run([cli_path, "sandbox", "start"], capture_output=True, text=True, env=env, timeout=60)
        assert "already running" in again.stdout
        assert len(acm.list_certificates()["CertificateSummaryList"]) == 2, "no second certificate per domain"
    finally:
        subprocess.run([cli_path, "sandbox", "stop"], capture_output=True, env=env, timeout=60)
