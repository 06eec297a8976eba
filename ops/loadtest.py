"""`orchestrator loadtest ENV`: k6 against the load balancer, with AWS watched while it runs.

During the run: k6's own counters (requests, p95, virtual users) every few seconds, and every
`loadtest.sample_interval_seconds` the app service's desired/running/pending tasks. After it:
Application Auto Scaling's activities in the window (when scale-out began and ended), the target
group's RequestCount and TargetResponseTime, and the collector sidecar's CPU and memory against
the app container's (Container Insights' container metrics: the monitoring overhead). Saved:
k6's summary, the samples, and a timeline PNG when matplotlib is installed (extra `plots`).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ops import k6
from orchestrator.errors import OrchestratorError

#: How often k6's counters are read for the timeline (seconds).
TIMELINE_STEP = 5.0


@dataclass
class Run:
    """What one load test measured; `result` is the report's data."""
    base_url: str
    stages: list[dict]
    started: float = 0.0  # wall clock (epoch seconds)
    timeline: list[dict] = field(default_factory=list)  # k6 counters over time
    tasks: list[dict] = field(default_factory=list)  # ECS counts over time
    errors: list[str] = field(default_factory=list)  # AWS samples that failed (the run goes on)


def loadtest(deployed, *, vus: int | None, duration: str | None, out_dir: Path) -> dict:
    manifest = deployed.manifest
    spec = manifest.loadtest
    if spec is None:
        raise OrchestratorError(f"manifests for {manifest.environment} have no loadtest section")
    binary = k6.find()
    run = Run(deployed.alb_url, k6.stages(spec, vus, duration))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"script": out_dir / "loadtest.js", "summary": out_dir / "k6-summary.json",
             "samples": out_dir / "samples.json", "timeline": out_dir / "timeline.png"}
    files["script"].write_text(k6.script(spec, run.base_url, run.stages, str(files["summary"])))
    exit_code, stderr = _run_k6(deployed, binary, run, files["script"], spec.sample_interval_seconds)
    if not files["summary"].exists():
        raise OrchestratorError(f"k6 exited {exit_code} without a summary: {stderr.strip()[-800:]}")
    summary = json.loads(files["summary"].read_text())
    after = _after_run(deployed, run)
    files["samples"].write_text(json.dumps({"stages": run.stages, "started": run.started, "timeline": run.timeline,
                                            "tasks": run.tasks, "aws_errors": run.errors, **after},
                                           indent=2, default=str))
    drawn = _draw(run, files["timeline"])
    result = _result(manifest, spec, run, summary, after, exit_code)
    result["files"] = {name: str(path) for name, path in files.items() if name != "timeline" or drawn}
    if not drawn:
        result["notes"].append("no timeline PNG: install the plots extra (pip install 'gamepulse-orchestrator[plots]')")
    if exit_code not in (0, k6.THRESHOLDS_FAILED):
        result["notes"].append(f"k6 exited {exit_code}: {stderr.strip()[-400:]}")
        result["passed"] = False
    return result


# -- during the run ---------------------------------------------------------------------------


def _run_k6(deployed, binary: str, run: Run, script: Path, interval: int) -> tuple[int, str]:
    from orchestrator.sandbox import free_port
    port = free_port()
    run.started = time.time()
    process = k6.start(binary, str(script), port)
    next_sample = 0.0
    try:
        while process.poll() is None:
            now = time.time() - run.started
            metrics = k6.live_metrics(port)
            if metrics:
                run.timeline.append({"t": round(now, 1), "requests": metrics.get("http_reqs", {}).get("count", 0),
                                     "p95_ms": metrics.get("http_req_duration", {}).get("p(95)"),
                                     "vus": metrics.get("vus", {}).get("value", 0)})
            if now >= next_sample:
                _sample_tasks(deployed, run, now)
                next_sample = now + interval
            time.sleep(TIMELINE_STEP)
    finally:
        if process.poll() is None:  # interrupted: stop k6 as well
            process.terminate()
        _, stderr = process.communicate(timeout=60)
    _sample_tasks(deployed, run, time.time() - run.started)
    return process.returncode, stderr


def _sample_tasks(deployed, run: Run, at: float) -> None:
    try:
        services = deployed.aws.client("ecs").describe_services(cluster=deployed.cluster,
                                                                services=[deployed.app_service])["services"]
    except Exception as error:  # AWS trouble must not stop the load: the report says what is missing
        run.errors.append(f"+{at:.0f}s ECS: {error}")
        return
    for service in services:
        run.tasks.append({"t": round(at, 1), "desired": service["desiredCount"], "running": service["runningCount"],
                          "pending": service["pendingCount"]})


# -- after the run ----------------------------------------------------------------------------


def _after_run(deployed, run: Run) -> dict:
    """Scaling activities in the window, and CloudWatch's view of it (1-minute periods)."""
    start = dt.datetime.fromtimestamp(run.started, dt.timezone.utc)
    end = dt.datetime.now(dt.timezone.utc)
    found: dict = {"scaling_activities": [], "cloudwatch": {}}
    try:
        pages = deployed.aws.client("application-autoscaling").get_paginator("describe_scaling_activities").paginate(
            ServiceNamespace="ecs", ResourceId=f"service/{deployed.cluster}/{deployed.app_service}",
            ScalableDimension="ecs:service:DesiredCount")
        found["scaling_activities"] = [
            {"start": a["StartTime"].timestamp() - run.started, "end": a["EndTime"].timestamp() - run.started
             if a.get("EndTime") else None, "status": a["StatusCode"], "description": a["Description"]}
            for page in pages for a in page["ScalingActivities"] if a["StartTime"] >= start]
    except Exception as error:
        run.errors.append(f"Application Auto Scaling: {error}")
    try:
        found["cloudwatch"] = _cloudwatch(deployed, start, end)
    except Exception as error:
        run.errors.append(f"CloudWatch: {error}")
    return found


def _cloudwatch(deployed, start, end) -> dict[str, list[float]]:
    """Per minute: the target group's RequestCount (Sum) and TargetResponseTime (Average); the
    app's and the sidecar's ContainerCpuUtilized / ContainerMemoryUtilized (Container Insights
    with enhanced observability publishes container metrics; without it these are empty)."""
    service = deployed.app_service
    app = deployed.manifest.services.tasks[service].app
    target_group = {"LoadBalancer": deployed.output("alb", "arn_suffix"),
                    "TargetGroup": deployed.target_group_suffix(service)}
    queries = {"requests": ("AWS/ApplicationELB", "RequestCount", "Sum", target_group),
               "response_time_s": ("AWS/ApplicationELB", "TargetResponseTime", "Average", target_group)}
    for role, container in (("app", service), ("sidecar", app.sidecar)):
        if container:
            dims = {"ClusterName": deployed.cluster, "ServiceName": service, "ContainerName": container}
            queries[f"{role}_cpu"] = ("ECS/ContainerInsights", "ContainerCpuUtilized", "Average", dims)
            queries[f"{role}_memory"] = ("ECS/ContainerInsights", "ContainerMemoryUtilized", "Average", dims)
    request = [{"Id": key, "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": namespace, "MetricName": metric,
                   "Dimensions": [{"Name": name, "Value": value} for name, value in dims.items()]},
        "Period": 60, "Stat": stat}} for key, (namespace, metric, stat, dims) in queries.items()]
    values: dict[str, list[float]] = {key: [] for key in queries}
    pages = deployed.aws.client("cloudwatch").get_paginator("get_metric_data").paginate(
        MetricDataQueries=request, StartTime=start - dt.timedelta(minutes=1), EndTime=end + dt.timedelta(minutes=1))
    for page in pages:
        for item in page["MetricDataResults"]:
            values[item["Id"]] += item["Values"]
    return values


# -- the report -------------------------------------------------------------------------------


def _result(manifest, spec, run: Run, summary: dict, after: dict, exit_code: int) -> dict:
    metrics = summary["metrics"]
    duration_s = summary.get("state", {}).get("testRunDurationMs", 0) / 1000
    trend = metrics.get("http_req_duration", {}).get("values", {})
    thresholds = {f"{name} {expression}": outcome.get("ok", False)
                  for name in ("http_req_duration", "http_req_failed")
                  for expression, outcome in metrics.get(name, {}).get("thresholds", {}).items()}
    requests = metrics.get("http_reqs", {}).get("values", {})
    return {
        "environment": manifest.environment, "url": run.base_url, "stages": run.stages,
        "passed": exit_code == 0 and all(thresholds.values()),
        "requests": int(requests.get("count", 0)), "requests_per_second": round(requests.get("rate", 0.0), 2),
        "duration_seconds": round(duration_s, 1),
        "latency_ms": {key: round(trend.get(stat, 0.0), 2) for key, stat in
                       (("p50", "p(50)"), ("p95", "p(95)"), ("p99", "p(99)"))},
        "error_rate_percent": round(metrics.get("http_req_failed", {}).get("values", {}).get("rate", 0.0) * 100, 3),
        "thresholds": thresholds,
        "scaling": _scaling(run, after["scaling_activities"]),
        "load_balancer": _load_balancer(after["cloudwatch"]),
        "monitoring_overhead": _overhead(after["cloudwatch"]),
        "notes": list(run.errors),
    }


def _scaling(run: Run, activities: list[dict]) -> dict:
    """When scale-out began (its first activity) and finished (running reached the new desired count)."""
    first = run.tasks[0] if run.tasks else {}
    out = [a for a in activities if _target(a) > first.get("desired", 0) and a["status"] != "Failed"]
    peak = max((sample["running"] for sample in run.tasks), default=0)
    finished = None
    if out:
        wanted = max(_target(a) for a in out)
        finished = next((sample["t"] for sample in run.tasks if sample["running"] >= wanted), None)
    return {"tasks_at_start": first.get("running"), "tasks_at_peak": peak,
            "scale_out_began_s": round(min(a["start"] for a in out), 1) if out else None,
            "scale_out_finished_s": finished, "activities": len(activities)}


def _target(activity: dict) -> int:
    match = re.search(r"desired count to (\d+)", activity["description"])
    return int(match.group(1)) if match else 0


def _load_balancer(cloudwatch: dict) -> dict:
    times = cloudwatch.get("response_time_s", [])
    return {"request_count": int(sum(cloudwatch.get("requests", []))),
            "target_response_time_ms": round(1000 * sum(times) / len(times), 1) if times else None}


def _overhead(cloudwatch: dict) -> dict:
    """The sidecar's share of the task's CPU and memory (sidecar / (sidecar + app)), in percent."""
    def share(kind: str):
        sidecar, app = cloudwatch.get(f"sidecar_{kind}", []), cloudwatch.get(f"app_{kind}", [])
        if not sidecar or not app:
            return None
        mine, theirs = sum(sidecar) / len(sidecar), sum(app) / len(app)
        return round(100 * mine / (mine + theirs), 1) if mine + theirs else None
    return {"sidecar_cpu_percent": share("cpu"), "sidecar_memory_percent": share("memory")}


def as_text(result: dict) -> str:
    latency, scaling, lb, overhead = (result["latency_ms"], result["scaling"], result["load_balancer"],
                                      result["monitoring_overhead"])
    stages = ", ".join(f"{stage['duration']} to {stage['target']} VUs" for stage in result["stages"])

    def seconds(value):
        return "-" if value is None else f"+{value:.0f}s"

    lines = [
        f"loadtest {result['environment']}: {'PASS' if result['passed'] else 'FAIL'}",
        f"  target          {result['url']}",
        f"  stages          {stages}",
        f"  requests        {result['requests']} in {result['duration_seconds']}s ({result['requests_per_second']}/s)",
        f"  latency         p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms",
        f"  errors          {result['error_rate_percent']}%",
        *(f"  threshold       {name}: {'pass' if ok else 'FAIL'}" for name, ok in result["thresholds"].items()),
        f"  tasks           {scaling['tasks_at_start']} at start, {scaling['tasks_at_peak']} at peak; scale-out began "
        f"{seconds(scaling['scale_out_began_s'])}, finished {seconds(scaling['scale_out_finished_s'])} "
        f"({scaling['activities']} scaling activities)",
        f"  load balancer   {lb['request_count']} requests (CloudWatch), target response time "
        f"{'-' if lb['target_response_time_ms'] is None else str(lb['target_response_time_ms']) + ' ms'}",
        f"  monitoring      {_overhead_line(overhead)}",
        *(f"  saved           {name}: {path}" for name, path in result["files"].items()),
        *(f"  note            {note}" for note in result["notes"]),
    ]
    return "\n".join(lines)


def _overhead_line(overhead: dict) -> str:
    cpu, memory = overhead["sidecar_cpu_percent"], overhead["sidecar_memory_percent"]
    if cpu is None and memory is None:
        return ("collector sidecar: not measured (no ContainerCpuUtilized/ContainerMemoryUtilized: Container "
                "Insights publishes container metrics only with enhanced observability)")
    def shown(value):
        return "-" if value is None else f"{value}%"
    return f"collector sidecar: {shown(cpu)} of the task's CPU, {shown(memory)} of its memory"


# -- the timeline -----------------------------------------------------------------------------


def _draw(run: Run, path: Path) -> bool:
    """requests/s, p95 and running tasks over the run, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = run.timeline
    rates = [(b["t"], (b["requests"] - a["requests"]) / max(b["t"] - a["t"], 0.001)) for a, b in zip(points, points[1:])]
    figure, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 7))
    axes[0].plot([t for t, _ in rates], [r for _, r in rates])
    axes[0].set_ylabel("requests/s")
    axes[1].plot([p["t"] for p in points], [p["p95_ms"] or 0 for p in points])
    axes[1].set_ylabel("p95 so far (ms)")
    axes[2].step([s["t"] for s in run.tasks], [s["running"] for s in run.tasks], where="post", label="running")
    axes[2].step([s["t"] for s in run.tasks], [s["desired"] for s in run.tasks], where="post", label="desired")
    axes[2].set_ylabel("tasks")
    axes[2].set_xlabel("seconds since start")
    axes[2].legend()
    figure.suptitle(f"loadtest {run.base_url}")
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True
