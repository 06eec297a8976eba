"""Prometheus's own tool, promtool, on what the platform renders: config syntax, relabelling
of discovered targets, and PromQL evaluated over series (`promtool test rules`).

promtool comes from Debian's `prometheus` package (`make test` installs it): 2.42 on Debian 12,
where the platform runs Prometheus v3.14.0. What that means for these checks:
- Two fields of the rendered prometheus.yml are newer than 2.42 and are checked against v3.14.0's
  documentation instead (docs/configuration/configuration.md): `storage.tsdb.retention` and
  `aws_sd_configs` (role ecs). `for_promtool_2` takes them out, and puts in place of each ECS
  discovery a file discovery with the targets v3.14.0's ECS discovery (discovery/aws/ecs.go)
  would produce, so the rendered relabel rules run on what Prometheus would see.
- Prometheus 3 range selectors are left-open, 2.42's left-closed: the series written here never
  have a sample on a window's edge, so both give the same answer.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import yaml

PROMTOOL = shutil.which("promtool")
MISSING = ("promtool is not installed: apt-get install -y prometheus (Debian's package; `make test` installs "
           "it before the tests)")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL, MISSING
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def ecs_target(ip: str, service: str, port: int, cluster_arn: str, status: str = "RUNNING") -> dict:
    """One task as Prometheus v3.14.0's ECS discovery labels it (discovery/aws/ecs.go: awsvpc)."""
    cluster = cluster_arn.rsplit("/", 1)[1]
    task = f"{cluster_arn.replace(':cluster/', ':task/')}/{ip.replace('.', '')}"
    return {"targets": [f"{ip}:{port}"], "labels": {
        "__meta_ecs_cluster": cluster, "__meta_ecs_cluster_arn": cluster_arn, "__meta_ecs_service": service,
        "__meta_ecs_task_group": f"service:{service}", "__meta_ecs_task_arn": task,
        "__meta_ecs_ip_address": ip, "__meta_ecs_launch_type": "FARGATE", "__meta_ecs_network_mode": "awsvpc",
        "__meta_ecs_desired_status": "RUNNING", "__meta_ecs_last_status": status}}


def for_promtool_2(config: dict, workdir: Path, tasks: dict[str, list[dict]] | None = None) -> Path:
    """The rendered config in the form promtool 2.42 reads (see the module's docstring); each
    ECS discovery becomes a file discovery of `tasks[cluster ARN]`, whose targets carry the
    discovery's port."""
    workdir.mkdir(parents=True, exist_ok=True)
    adapted = copy.deepcopy(config)
    adapted.get("storage", {}).get("tsdb", {}).pop("retention", None)
    for job in adapted["scrape_configs"]:
        for index, sd in enumerate(job.pop("aws_sd_configs", [])):
            assert sd["role"] == "ecs", sd
            groups = []
            for cluster in sd["clusters"]:
                for target in (tasks or {}).get(cluster, []):
                    ip = target["labels"]["__meta_ecs_ip_address"]
                    groups.append({**target, "targets": [f"{ip}:{sd.get('port', 80)}"]})
            path = workdir / f"{job['job_name']}-{index}.json"
            path.write_text(json.dumps(groups))
            job.setdefault("file_sd_configs", []).append({"files": [path.name]})
    out = workdir / "prometheus.yml"
    out.write_text(yaml.safe_dump(adapted, sort_keys=False))
    return out


def scraped_targets(config: dict, job: str, tasks: dict[str, list[dict]], workdir: Path) -> list[dict]:
    """The targets Prometheus scrapes for `job` (their final labels), per `promtool check
    service-discovery` on the rendered relabel rules."""
    path = for_promtool_2(config, workdir, tasks)
    # promtool waits the whole timeout for discovery to settle; a file discovery answers at once.
    result = run("check", "service-discovery", "--timeout=3s", path.name, job, cwd=workdir)
    assert result.returncode == 0, result.stderr
    return [target["labels"] for target in json.loads(result.stdout) if target["labels"]]


def test_rules(rule_file: dict, tests: dict, workdir: Path) -> subprocess.CompletedProcess:
    """`promtool test rules` of one rule file and one test file; the caller reads returncode."""
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rule_file, sort_keys=False))
    (workdir / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], **tests}, sort_keys=False))
    return run("test", "rules", "tests.yaml", cwd=workdir)


test_rules.__test__ = False  # a helper, not a pytest test
