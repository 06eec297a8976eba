"""`make bench`: API calls, time and memory of the command line against a local moto server.

Runs the installed console script (as a user would) through a counting proxy, for: a cold
`apply dev`, an unchanged re-apply, a `plan`, and the start-up of `--help`. Prints each figure
beside the reference run of Terraform on the same workload (DESIGN.md) as a ratio; everything
is measured in this one run, so the ratios hold on a noisy shared machine where seconds do not.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "orchestrator")

#: Terraform on the same dev workload against a local moto server (DESIGN.md).
TERRAFORM = {"cold calls": 380, "cold mutating": 124, "reapply reads": 166, "reapply s": 12.8, "plan s": 10.5}

ENV = {
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "GAMEPULSE_DB_CONNECTION": "Host=bench;Password=bench-only", "GAMEPULSE_SLACK_WEBHOOK": "https://hooks.example/b",
}


def start_server():
    from orchestrator import sandbox
    port = sandbox.free_port()
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.emulator", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **ENV, **sandbox.EMULATOR_SETTINGS})
    url = f"http://127.0.0.1:{port}"
    while not sandbox.is_alive({"url": url}):
        time.sleep(0.1)
    return process, url


def timed(endpoint: str, *args: str) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds and peak memory (KiB) of one command-line run."""
    env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": endpoint, "ORCHESTRATOR_MANIFESTS": str(ROOT / "manifests")}
    env.pop("CI", None)
    started = time.perf_counter()
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 2):
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, result


def reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()


def main() -> None:
    from tests.wire import CountingProxy
    server, url = start_server()
    proxy = CountingProxy(url)
    try:
        # Calls, counted at the wire through the proxy.
        timed(proxy.url, "apply", "dev")
        cold_calls, cold_mut = proxy.count(), proxy.count(mutating=True)
        proxy.reset()
        timed(proxy.url, "apply", "dev")
        re_reads = proxy.count(mutating=False)
        re_mut = proxy.count(mutating=True, exclude=("DynamoDB",))
        re_state = proxy.count(mutating=True) - re_mut
        proxy.reset()
        timed(proxy.url, "plan", "dev")
        plan_calls = proxy.count()
        # Times, straight to the server (the proxy's own hops would count otherwise).
        reset(url)
        help_s, _, _ = timed(url, "--help")
        cold_s, cold_kib, _ = timed(url, "apply", "dev")
        re_s, re_kib, _ = timed(url, "apply", "dev")
        plan_s, _, _ = timed(url, "plan", "dev")
    finally:
        proxy.close()
        server.terminate()
    rows = [
        ("cold apply: API calls", cold_calls, TERRAFORM["cold calls"]),
        ("cold apply: mutating calls", cold_mut, TERRAFORM["cold mutating"]),
        ("cold apply: seconds", round(cold_s, 2), None),
        ("unchanged re-apply: reads", re_reads, TERRAFORM["reapply reads"]),
        ("unchanged re-apply: mutating calls to the platform", re_mut, None),
        ("unchanged re-apply: writes to the state table (lock, run record)", re_state, None),
        ("unchanged re-apply: seconds", round(re_s, 2), TERRAFORM["reapply s"]),
        ("plan: API calls", plan_calls, None),
        ("plan: seconds", round(plan_s, 2), TERRAFORM["plan s"]),
        ("--help: seconds (start-up)", round(help_s, 2), None),
        ("peak memory of one run: MiB", round(max(cold_kib, re_kib) / 1024, 1), None),
    ]
    print(f"{'measure':<68} {'orchestrator':>12} {'terraform':>10} {'ratio':>7}")
    for name, ours, theirs in rows:
        ratio = f"{ours / theirs:.2f}" if theirs else ""
        print(f"{name:<68} {ours:>12} {theirs if theirs is not None else '':>10} {ratio:>7}")
    print("\nThe Terraform figures cover the whole dev workload; steps not built yet (services, dashboards)\n"
          "are missing from ours, so compare per resource until they land.")


if __name__ == "__main__":
    main()
