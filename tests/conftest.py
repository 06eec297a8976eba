"""Shared fixtures: fake credentials, a socket guard, one fresh `mock_aws` per test, the
default manifests, and a call ledger to count what a run sends to AWS."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    # moto gap: requested certificates stay PENDING_VALIDATION for 60 s unless told otherwise.
    "MOTO_ACM_VALIDATION_WAIT": "0",
    # Secrets the default manifests read from the environment.
    **{f"GAMEPULSE_{env}_DB_CONNECTION": "Host=db.test;Username=gp;Password=test-db-password-123"
       for env in ("DEV", "STAGING", "PROD")},
    **{f"GAMEPULSE_{env}_SLACK_WEBHOOK": "https://hooks.slack.example/services/TEST/webhook-secret-456"
       for env in ("DEV", "STAGING", "PROD")},
}


#: Modules holding the longest tests (command lines against a moto server, 5-30 s a test; the
#: chains of killed runs), the slowest first. They run before the rest, so that with `-n 2` the two
#: workers end together rather than one finishing a long test while the other idles. The order
#: changes no result.
SLOW_MODULES_FIRST = ("test_guides.py", "test_cli.py", "test_saved_plan.py", "test_vpc.py", "test_crash.py",
                      "test_dashboards.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_MODULES_FIRST.index(name) if name in SLOW_MODULES_FIRST else len(SLOW_MODULES_FIRST)
    items.sort(key=rank)


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch):
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "ORCHESTRATOR_MANIFESTS", "ORCHESTRATOR_SANDBOX"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse any connection that is not to loopback, so a client the mock missed fails loudly."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")) \
                and sock.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """Retry and wait loops back off without taking wall time; IAM changes are visible at once
    (as in moto; tests of the propagation wait set it themselves)."""
    from orchestrator import retry, waiters
    from steps import iam
    monkeypatch.setattr(retry, "sleep", lambda seconds: None)
    monkeypatch.setattr(waiters, "sleep", lambda seconds: None)
    monkeypatch.setattr(iam, "IAM_PROPAGATION_SECONDS", 0.0)


@pytest.fixture(scope="session", autouse=True)
def shared_service_models(tmp_path_factory):
    """Each fresh `Aws` (each "new process" of a crash test) would load botocore's service
    models again, tens of milliseconds per client; one shared loader keeps tests fast, as one
    long-lived process would. The files it keeps (orchestrator.service_models) go to a folder of
    this test session, for the command lines the tests start too, never to the user's cache."""
    import functools

    from botocore import loaders, session

    from orchestrator import service_models
    loader = loaders.create_loader()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(session.Session, "_register_data_loader",
                      lambda self: self._components.lazy_register_component("data_loader", lambda: loader))
        patch.setattr(service_models, "loader", functools.cache(service_models.loader))
        yield


@pytest.fixture(autouse=True)
def rendered_files_not_kept(monkeypatch):
    """In-process tests render the config files every time: several change the renderer in memory
    (its YAML classes, a dashboard, `CONFIGS`), which the key of the kept files (steps.bundles),
    made of files on disk, cannot see. The command lines the tests start keep them, in this
    session's cache folder, as a user's runs do; tests/test_kept_rendering.py turns them on."""
    from steps import bundles
    monkeypatch.setattr(bundles, "kept_folder", lambda: None)


@pytest.fixture(scope="session", autouse=True)
def emulator_fixes():
    """The same fixes for moto's gaps that the sandbox applies (orchestrator/emulator.py), and the
    tests' own additions (tests/moto_server.py): AWS-managed IAM policies parsed once, for the one
    partition the tests use; a look at moto's state after each request (the crash tests)."""
    from orchestrator.emulator import apply_fixes
    from tests.moto_server import load_managed_policies_once, watch_requests
    load_managed_policies_once()
    watch_requests()
    apply_fixes()


@pytest.fixture
def mock(request, fake_aws_env):
    """A fresh in-process AWS for one test.

    moto gap: AWS-managed policies (AmazonECSTaskExecutionRolePolicy) exist only when loaded,
    which costs about a second per test; tests that attach one mark themselves
    `@pytest.mark.managed_policies`.
    """
    from moto import mock_aws
    load = request.node.get_closest_marker("managed_policies") is not None
    with mock_aws(config={"iam": {"load_aws_managed_policies": load}}):
        yield


@pytest.fixture
def manifest():
    from orchestrator.manifest import load_manifest
    return load_manifest(MANIFESTS, "dev")


@pytest.fixture
def aws(mock):
    from orchestrator.aws import Aws
    return Aws("us-east-1")


def pytest_configure(config):
    config.addinivalue_line("markers", "dev_applied: the `endpoint` fixture starts from dev applied (the state a cold "
                                       "`apply dev` left, restored) instead of an empty account")


@pytest.fixture(scope="session")
def server():
    """One moto server per worker (the emulator, with the settings the sandbox uses), for the
    command-line tests; each test resets it (`endpoint`) or restores a snapshot (`dev_applied`)."""
    from tests.moto_server import moto_server
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def wire(server):
    """Every request the command line sends passes this counting proxy on its way to moto."""
    from tests.wire import CountingProxy
    proxy = CountingProxy(server)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def dev_snapshot(server):
    """dev applied once from nothing, through the command line as a user runs it, and the moto
    state it left (the state table included) saved as the snapshot "dev"."""
    from tests.moto_server import reset, snapshot
    from tests.test_cli import run
    reset(server)
    result = run(server, "apply", "dev")
    assert result.returncode == 0, result.stderr[-3000:]
    snapshot(server, "dev")
    return "dev"


@pytest.fixture
def endpoint(request, server, wire):
    """The proxy's URL, before a new account: empty, or with the `dev_applied` marker, holding
    exactly what a cold `apply dev` made (its run in the state table included)."""
    from tests.moto_server import reset, restore
    if request.node.get_closest_marker("dev_applied"):
        restore(server, request.getfixturevalue("dev_snapshot"))
    else:
        reset(server)
    wire.reset()
    return wire.url


@pytest.fixture
def applied(server, dev_snapshot):
    """dev applied (the snapshot restored) with the apps' tasks registered as load balancer
    targets, for verify, loadtest and drill: each test starts from it, whatever the one before
    changed."""
    from tests.moto_server import restore
    from tests.test_verify import register_targets
    restore(server, dev_snapshot)
    register_targets(server)
    return server
