"""The `orchestrator` command line. Heavy modules (boto3, the steps) load only when a command
needs them, so `validate`, `graph` and `--help` start fast."""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import click

from orchestrator.errors import Interrupted, NotApplied, OrchestratorError
from orchestrator.model import DELETE_DATA, DELETE_SECRETS

ENV_ARG = click.argument("env")
PARALLELISM_OPT = click.option("--parallelism", type=click.IntRange(1, 64), default=None,
                               help="At most this many steps at once (default: every ready step).")
LOCK_TIMEOUT_OPT = click.option("--lock-timeout", type=click.FloatRange(0), default=0.0, show_default=True,
                                help="Seconds to wait for another run's lock before giving up.")
TARGET_OPT = click.option("--target", "targets", multiple=True, metavar="STEP",
                          help="Only this step and what it depends on (repeatable).")


@dataclass
class Options:
    manifests: Path
    endpoint_url: str | None
    profile: str | None
    use_sandbox: bool


#: How long a command runs before the cyclic garbage collector starts (`collect_later`).
COLLECTOR_OFF_SECONDS = 3.0


def main() -> None:
    collect_later(COLLECTOR_OFF_SECONDS)
    # pydantic looks for plugins in every installed distribution's entry points when it builds
    # the first model, some 7 ms of every command; the manifest's validation uses none. Its
    # documented switch, unless the user set it.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        cli.main(prog_name="orchestrator", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(pipeline_safe(error.exit_code))
    except OrchestratorError as error:
        report_error(str(error))
        sys.exit(pipeline_safe(error.exit_code))
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as error:  # AWS and network errors outside a step: one clear line, no traceback
        if not type(error).__module__.startswith(("botocore", "boto3", "urllib3")):
            raise
        from orchestrator.engine import describe_error
        report_error(f"AWS: {describe_error(error)}")
        sys.exit(1)
    finally:
        gc.freeze()


def collect_later(seconds: float) -> threading.Timer:
    """A run builds millions of objects that live as long as the process (botocore's service
    models, pydantic's validators) and few reference cycles. At its default pace the cyclic
    collector scans them some three hundred times while they are built, then all of them again
    at exit. It stays off for the command's first `seconds`, which a plan or an unchanged apply
    ends within, then runs less often than Python's default; never over what exists when the
    command ends (`main`'s freeze)."""
    gc.set_threshold(10_000, 50, 100)
    gc.disable()
    timer = threading.Timer(seconds, gc.enable)
    timer.daemon = True  # never keeps a finished command alive
    timer.start()
    return timer


def pipeline_safe(exit_code: int) -> int:
    """With `--detailed-exitcode`, 2 means "changes pending" and nothing else: a usage error
    (a mistyped flag, an unknown step) exits 1 instead, as Terraform's does."""
    if exit_code == 2 and "--detailed-exitcode" in sys.argv[1:]:
        return 1
    return exit_code


def report_error(message: str) -> None:
    """The closing error line: plain text, or one more JSON object when logs are JSON."""
    from orchestrator.log import redactor
    message = redactor.clean(message)
    if LOG_FORMAT["value"] == "json":
        click.echo(json.dumps({"event": "error", "level": "error", "error": message}), err=True)
    else:
        click.echo(f"Error: {message}", err=True)


#: The log format chosen for this invocation (the error line follows it).
LOG_FORMAT = {"value": "console"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--manifests", type=click.Path(file_okay=False, path_type=Path), envvar="ORCHESTRATOR_MANIFESTS",
              default="manifests", show_default=True, help="Directory of the manifests.")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", default=None,
              help="Send every AWS call here (an emulator). Also AWS_ENDPOINT_URL.")
@click.option("--profile", envvar="AWS_PROFILE", default=None, help="AWS profile. Also AWS_PROFILE.")
@click.option("--sandbox", "use_sandbox", is_flag=True, envvar="ORCHESTRATOR_SANDBOX",
              help="Use the local sandbox started by `sandbox start`. Also ORCHESTRATOR_SANDBOX=1.")
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None,
              help="Progress as readable lines (default on a terminal) or one JSON object per line.")
@click.option("-v", "--verbose", count=True, help="More detail: every AWS call as it is sent.")
@click.version_option(package_name="gamepulse-orchestrator")
@click.pass_context
def cli(ctx, manifests, endpoint_url, profile, use_sandbox, log_format, verbose):
    """Deploy the GamePulse platform onto AWS ECS Fargate."""
    from orchestrator import log
    fmt = log_format or ("json" if os.environ.get("CI") else "console")
    LOG_FORMAT["value"] = fmt
    log.configure(fmt, verbose)
    ctx.obj = Options(manifests, endpoint_url, profile, use_sandbox)


# -- helpers ------------------------------------------------------------------------------------


def load(options: Options, env: str):
    from orchestrator.manifest import load_manifest
    return load_manifest(options.manifests, env)


def connect(options: Options, manifest, *, check: bool = True):
    """The AWS client factory for this manifest, refusing the wrong account (unless the caller
    checks it itself: `check_account`)."""
    from orchestrator.aws import Aws
    endpoint = options.endpoint_url
    if options.use_sandbox:
        from orchestrator import sandbox
        endpoint = sandbox.endpoint()
        os.environ.update(sandbox.SANDBOX_CREDENTIALS)
    aws = Aws(manifest.region, profile=None if options.use_sandbox else options.profile, endpoint_url=endpoint)
    if check:
        check_account(aws, manifest)
    return aws


def check_account(aws, manifest) -> None:
    if manifest.account_id and aws.account_id() != manifest.account_id:
        raise OrchestratorError(f"the credentials are for account {aws.account_id()}, but the {manifest.environment} "
                                f"manifest is for account {manifest.account_id}; nothing was changed")


def build_graph():
    from orchestrator.graph import StepGraph
    from steps import all_steps
    return StepGraph(all_steps())


def store_for(aws, manifest):
    from orchestrator.state import StateStore
    return StateStore(aws, manifest)


def graph_and_store(options: Options, manifest, targets, *, ensure_table: bool):
    """The step graph (`--target` checked against it), and the state store on a new connection
    (`connect`), its table ensured (and lock item read, beside the account's check) when
    `ensure_table`.

    The connection's first round trips (the credentials' account, the lock item) need no step:
    with no target to check, they go out on a thread of their own while this one imports the
    steps and builds the graph (a fifth of a second of CPU), instead of after it. With targets,
    nothing is sent until they are known to be steps."""
    def connected():
        if not ensure_table:
            return store_for(connect(options, manifest), manifest)
        aws = connect(options, manifest, check=False)
        store = store_for(aws, manifest)
        store.ensure_table(meanwhile=lambda: check_account(aws, manifest))
        return store

    if targets:
        graph = build_graph()
        graph.select(targets)  # unknown targets fail before any AWS call
        return graph, connected()
    import importlib

    # The modules of ours both threads need are imported before they part: two threads importing
    # the same modules at once can deadlock where those import each other.
    state = importlib.import_module("orchestrator.state")
    store = state.in_background(connected)
    graph = build_graph()
    return graph, store.result()


def failed_steps(results: dict) -> list[str]:
    """Names of the failed steps (their errors are shown above, in the plan or the summary)."""
    return [name for name, r in results.items() if r.status == "failed"]


def run_locked(options: Options, env: str, command: str, targets, lock_timeout: float, work, *,
               allow: frozenset[str] = frozenset(), parallelism: int | None = None, report=None,
               image_tags: dict[str, str] | None = None, redeploys=(), from_files=None):
    """Load (unless the caller passes the manifest it loaded, `from_files`), connect, take the
    lock, run `work(engine)`, record the run, release the lock; then `report(results)` (it may
    raise), then fail if a step failed."""
    from orchestrator.engine import Engine
    from orchestrator.manifest import manifest_hash
    from orchestrator.render import run_summary

    manifest = requested(load(options, env) if from_files is None else from_files, image_tags or {}, redeploys)
    graph, store = graph_and_store(options, manifest, targets, ensure_table=True)
    aws = store.aws
    run_id = uuid.uuid4().hex[:12]
    # A failure of the store's own checks once the lock is taken ends the run "failed" and frees the lock.
    lease = store.acquire(run_id, command, wait_seconds=lock_timeout, manifest_hash=manifest_hash(manifest))
    engine = Engine(manifest, aws, graph, store=store, lease=lease, allow=allow, parallelism=parallelism)
    results = engine.results  # filled as steps run, so an interrupted run still reports them
    outcome = "interrupted"
    started = time.monotonic()
    try:
        lease.start_heartbeat()
        results = work(engine)
        # "incomplete": a destroy that kept what it was asked to remove (a protected load balancer).
        outcome = ("failed" if failed_steps(results) else
                   "incomplete" if any(r.status in ("kept", "skipped") for r in results.values()) else "ok")
    except OrchestratorError as error:  # stopped before any change (pre-flight), or interrupted
        outcome = "interrupted" if isinstance(error, Interrupted) else getattr(error, "outcome", "failed")
        raise
    except Exception as error:  # an AWS error outside a step (the state table's); a declined prompt is not one
        outcome = "interrupted" if isinstance(error, click.exceptions.Abort) else "failed"
        raise
    finally:
        results = engine.results
        summary = {name: r.summary() for name, r in results.items()}
        summary["_calls"] = {"total": aws.ledger.count(), "mutating": aws.ledger.count(mutating=True),
                             "seconds": round(time.monotonic() - started, 2)}
        try:
            if not lease.lost:
                store.finish_run(lease, outcome, summary)  # and frees the lock, in one write
        finally:
            lease.release()  # if not freed above
            verb, _, flags = command.partition(" ")  # "apply --image-tag x=1" → "apply dev --image-tag x=1"
            title = " ".join(filter(None, (verb, env, flags)))
            click.echo(run_summary(f"{title}: {outcome} in {time.monotonic() - started:.1f}s", results,
                                   aws.ledger))
    if report is not None:
        report(results)
    failures = failed_steps(results)
    if failures:
        raise OrchestratorError(f"{len(failures)} step(s) failed: {', '.join(failures)} (see above)")
    return results


def allow_flags(func):
    """--delete-data and --delete-secrets: the only ways to let a run delete what holds data."""
    func = click.option("--delete-secrets", is_flag=True,
                        help="Allow deleting secrets (with their recovery window).")(func)
    return click.option("--delete-data", is_flag=True,
                        help="Allow deleting resources that hold data (buckets with objects, file systems, "
                             "log groups, repositories with images).")(func)


def allowed(delete_data: bool, delete_secrets: bool) -> frozenset[str]:
    return frozenset(name for name, on in ((DELETE_DATA, delete_data), (DELETE_SECRETS, delete_secrets)) if on)


def parse_image_tags(ctx, _param, values) -> dict[str, str]:
    tags = {}
    for value in values:
        name, sep, tag = value.partition("=")
        if not sep or not name or not tag:
            raise click.BadParameter(f"{value!r} is not NAME=TAG (e.g. gamepulse=1.4.2)")
        tags[name] = tag
    return tags


def requested(manifest, image_tags: dict[str, str], redeploys=()):
    """The manifest with the run's requests (`--image-tag`, `--redeploy`). A name the manifest
    does not have is a usage error, as a malformed value is: exit 2 (1 under --detailed-exitcode)."""
    from orchestrator.errors import ManifestError, UsageError
    from orchestrator.manifest import with_image_tags, with_redeploys
    try:
        return with_redeploys(with_image_tags(manifest, image_tags), redeploys)
    except ManifestError as error:
        raise UsageError(str(error)) from None


def request_flags(image_tags: dict[str, str], redeploys) -> list[str]:
    """The run's requests as they are recorded with its command: `--image-tag gamepulse=1.4.2 --redeploy loki`."""
    return [*(f"--image-tag {name}={tag}" for name, tag in sorted(image_tags.items())),
            *(f"--redeploy {name}" for name in sorted(set(redeploys)))]


IMAGE_TAG_OPT = click.option("--image-tag", "image_tags", multiple=True, metavar="NAME=TAG", callback=parse_image_tags,
                             help="Deploy (plan: as apply would) this tag of repository NAME (images.repositories) "
                                  "instead of the manifest's (repeatable).")
REDEPLOY_OPT = click.option("--redeploy", "redeploys", multiple=True, metavar="SERVICE",
                            help="A new deployment of this service (services.tasks) though nothing changed: its "
                                 "tasks are replaced (ECS force new deployment; repeatable).")


# -- commands -----------------------------------------------------------------------------------


@cli.command()
@ENV_ARG
@click.pass_obj
def validate(options: Options, env: str):
    """Check the manifests of ENV; no AWS call."""
    manifest = load(options, env)
    build_graph()
    public, private = manifest.network.subnet_cidrs()
    click.echo(f"{options.manifests}/{env}.yaml is valid: {manifest.prefix} in {manifest.region}, "
               f"{manifest.network.zones} zones, public {', '.join(public)}, private {', '.join(private)}")


@cli.command()
@ENV_ARG
@TARGET_OPT
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when changes are pending, 0 when none.")
@click.option("--destroy", "destroying", is_flag=True,
              help="Show what `destroy` with the same flags would delete and refuse (--target: the step and "
                   "the steps that depend on it).")
@allow_flags
@IMAGE_TAG_OPT
@REDEPLOY_OPT
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Also save the plan to FILE: `apply FILE` applies exactly it (with --destroy: destroys exactly "
                   "that), or refuses if anything it rests on moved (the manifest, the state, AWS). Holds no "
                   "secret value.")
@click.pass_obj
def plan(options: Options, env: str, targets, as_json: bool, detailed_exitcode: bool, destroying: bool,
         delete_data: bool, delete_secrets: bool, image_tags: dict[str, str], redeploys, out: Path | None):
    """Show what `apply` (or `destroy`) would change; read-only."""
    from orchestrator.engine import Engine
    from orchestrator.render import pending, plan_json, plan_text

    from_files = load(options, env)
    manifest = requested(from_files, image_tags, redeploys)
    if destroying:
        refuse_if_protected(manifest)
    graph, store = graph_and_store(options, manifest, targets, ensure_table=False)
    aws = store.aws
    engine = Engine(manifest, aws, graph, store=store, allow=allowed(delete_data, delete_secrets))
    results = engine.plan_destroy(targets) if destroying else engine.plan(targets)
    what = "Destroy plan" if destroying else "Plan"
    click.echo(plan_json(env, results) if as_json else
               plan_text(f"{what} for {manifest.prefix} ({manifest.region}):", results))
    problems = [f"{name}: could not plan: {results[name].error}" for name in failed_steps(results)]
    problems += [f"{name}: {problem}" for name, result in results.items() for problem in result.problems]
    if problems:
        raise OrchestratorError(f"{len(problems)} problem(s) found (apply would stop before any change):\n  "
                                + "\n  ".join(problems))
    if out is not None:
        save_plan(out, engine, store, from_files, results, targets, image_tags, redeploys,
                  allowed(delete_data, delete_secrets), destroying)
    if detailed_exitcode and pending(results):
        sys.exit(2)


def save_plan(out: Path, engine, store, from_files, results: dict, targets, image_tags: dict[str, str], redeploys,
              allow: frozenset[str], destroying: bool) -> None:
    """Write the plan just shown to `out` with what it rests on (see orchestrator.planfile)."""
    from orchestrator import planfile
    from orchestrator.render import is_refused
    inputs = planfile.PlanInputs(targets=tuple(targets), image_tags=tuple(sorted(image_tags.items())),
                                 redeploys=tuple(sorted(set(redeploys))), allow=tuple(sorted(allow)),
                                 destroy=destroying)
    last_run = (store.runs(1) or [None])[0] if store.exists() else None
    document = planfile.build(manifest_from_files=from_files, manifest=engine.manifest,
                              account_id=engine.aws.account_id(), inputs=inputs, results=results,
                              records=engine.records, last_run=last_run, refused=is_refused)
    planfile.write(out, document)
    message = (f"Saved the plan ({planfile.pending(document)} change(s)) to {out}. Apply exactly it with: "
               f"orchestrator apply {from_files.environment} {out}")
    # On stderr, with the progress lines: stdout may be the plan as JSON, which this must not spoil.
    click.echo(json.dumps({"event": "plan saved", "level": "info", "message": message, "file": str(out)})
               if LOG_FORMAT["value"] == "json" else message, err=True)


@cli.command()
@click.argument("env", metavar="ENV|PLAN_FILE")
@click.argument("plan_file", required=False, type=click.Path(dir_okay=False, path_type=Path), metavar="[PLAN_FILE]")
@TARGET_OPT
@PARALLELISM_OPT
@LOCK_TIMEOUT_OPT
@allow_flags
@IMAGE_TAG_OPT
@REDEPLOY_OPT
@click.option("--yes", is_flag=True, help="Apply without asking first (asked only on a terminal).")
@click.pass_obj
def apply(options: Options, env: str, plan_file: Path | None, targets, parallelism, lock_timeout, delete_data,
          delete_secrets, image_tags, redeploys, yes: bool):
    """Converge AWS to the manifest of ENV; or apply exactly a saved plan (`plan ENV --out FILE`):
    `apply FILE`, or `apply ENV FILE` to check that FILE is ENV's plan too.

    On a terminal, `apply ENV` shows the plan and asks before any change (`--yes` does not ask;
    nor does a run without a terminal). A manifest with `protection.require_saved_plan` accepts
    only a saved plan."""
    env, plan_file = apply_arguments(options, env, plan_file)
    if plan_file is not None:
        if targets or image_tags or redeploys or delete_data or delete_secrets:
            raise click.UsageError("a saved plan holds its --target, --image-tag, --redeploy and --delete-* flags; "
                                   "make the plan again with the ones you want")
        apply_saved(options, env, plan_file, parallelism, lock_timeout)
        return
    manifest = load(options, env)
    if manifest.protection.require_saved_plan:
        flags = [*(f"--target {t}" for t in targets), *request_flags(image_tags, redeploys),
                 *(f"--{flag}" for flag in sorted(allowed(delete_data, delete_secrets)))]
        plan_command = " ".join(["orchestrator plan", env, *flags, "--out", f"{env}.plan"])
        raise OrchestratorError(f"{env} applies only a saved plan (protection.require_saved_plan in its manifest); "
                                f"nothing was changed. Make one with `{plan_command}`, review it, then apply exactly "
                                f"it with `orchestrator apply {env} {env}.plan`")
    review = None if yes or not sys.stdin.isatty() else Confirmation(env, f"{manifest.prefix} ({manifest.region})")
    command = " ".join(["apply", *request_flags(image_tags, redeploys)])
    run_locked(options, env, command, targets, lock_timeout, lambda engine: engine.apply(targets, review=review),
               allow=allowed(delete_data, delete_secrets), parallelism=parallelism, image_tags=image_tags,
               redeploys=redeploys, from_files=manifest)


def apply_arguments(options: Options, first: str, second: Path | None) -> tuple[str | None, Path | None]:
    """(environment, plan file) from `apply ENV`, `apply FILE` or `apply ENV FILE`. One word is
    an environment if the manifests define it, else a plan file if one exists by that name."""
    if second is not None:
        return first, second
    from orchestrator.manifest import list_environments
    is_environment = first in list_environments(options.manifests)
    is_file = Path(first).is_file()
    if is_environment and is_file:
        raise click.UsageError(f"{first!r} is both an environment and a file here: write ./{first} for the plan "
                               f"file, or `apply {first} FILE`")
    if is_file:
        return None, Path(first)
    return first, None  # an environment, or an unknown name: loading its manifest says which exist


def apply_saved(options: Options, env: str | None, path: Path, parallelism, lock_timeout) -> None:
    """`apply FILE`: exactly the saved plan, or a refusal naming what moved (exit 1, nothing
    changed). The plan was made without the lock; every check is made again under it."""
    from orchestrator import planfile
    saved = planfile.read(path)
    saved.check_environment(env)
    from_files = load(options, saved.environment)
    saved.check_manifest(from_files)  # before any AWS call
    image_tags, redeploys = dict(saved.inputs.image_tags), saved.inputs.redeploys
    saved.check_account(connect(options, requested(from_files, image_tags, redeploys)).account_id())
    if saved.inputs.destroy:
        refuse_if_protected(from_files)
    click.echo(f"Applying the {saved.describe()}")
    targets, allow = saved.inputs.targets, frozenset(saved.inputs.allow)

    def work(engine):
        saved.runs = lambda: engine.store.runs(10)
        if saved.inputs.destroy:
            return engine.destroy(targets, review=saved)
        return engine.apply(targets, review=saved)

    verb = "destroy" if saved.inputs.destroy else "apply"
    flags = [flag for flag in saved.inputs.flags() if flag != "--destroy"]
    report = (lambda results: report_destroy(saved.environment, targets, allow, results)) if saved.inputs.destroy \
        else None
    run_locked(options, saved.environment, " ".join([verb, *flags, f"(saved plan {path.name})"]), targets,
               lock_timeout, work, allow=allow, parallelism=parallelism, image_tags=image_tags, redeploys=redeploys,
               report=report, from_files=from_files)


class Confirmation:
    """`apply ENV` on a terminal: the plan (computed under the lock, so what is confirmed is what
    is applied), then a question; anything but "yes" stops before any change and the lock is
    released. The engine's `Review`."""

    def __init__(self, env: str, where: str):
        self.env = env
        self.where = where
        self.confirmed = None

    def approve(self, planned: dict, records: dict) -> None:
        from orchestrator.planfile import PlannedChanges
        from orchestrator.render import pending, plan_text
        self.confirmed = PlannedChanges.of(planned, "the plan confirmed")
        count = pending(planned)
        if not count:
            return  # nothing would change: nothing to confirm
        click.echo(plan_text(f"Plan for {self.where}:", planned))
        answer = click.prompt(f"\nApply these {count} change(s) to {self.env}? Only 'yes' applies them",
                              default="", show_default=False)
        if answer.strip() != "yes":
            raise NotApplied(f"apply {self.env} declined: nothing was changed", "declined")

    def admit(self, step: str, changes: list) -> None:
        self.confirmed.admit(step, changes)  # nothing beyond what was confirmed


@cli.command()
@ENV_ARG
@click.option("--target", "targets", multiple=True, metavar="STEP",
              help="Only this step and the steps that depend on it, which must go first (repeatable).")
@click.option("--yes", is_flag=True, help="Confirm: delete what this environment owns.")
@PARALLELISM_OPT
@LOCK_TIMEOUT_OPT
@allow_flags
@click.pass_obj
def destroy(options: Options, env: str, targets, yes: bool, parallelism, lock_timeout, delete_data,
            delete_secrets):
    """Delete what ENV owns, in reverse dependency order."""
    manifest = load(options, env)
    refuse_if_protected(manifest)
    if not yes:
        raise click.UsageError("destroy deletes resources: pass --yes to confirm")
    allow = allowed(delete_data, delete_secrets)
    run_locked(options, env, "destroy", targets, lock_timeout, lambda engine: engine.destroy(targets),
               allow=allow, parallelism=parallelism, from_files=manifest,
               report=lambda results: report_destroy(env, targets, allow, results))


def refuse_if_protected(manifest) -> None:
    if manifest.protection.refuse_destroy:
        raise OrchestratorError(f"{manifest.environment} refuses destroy (protection.refuse_destroy in its manifest); "
                                "nothing changed")


def report_destroy(env: str, targets, allow: frozenset[str], results: dict) -> None:
    """Kept data is listed with the command that removes it too; anything else left fails the
    run (exit 1), naming it and the commands that remove it."""
    from orchestrator.render import destroy_leftovers, kept_line
    left, kept = destroy_leftovers(results)
    again = " ".join(["orchestrator destroy", env, "--yes", *(f"--target {t}" for t in targets)])
    if kept:
        passed = "".join(f" --{flag}" for flag in sorted(allow))
        click.echo(f"Kept {len(kept)} resource(s) that hold data, as asked (not a failure):")
        for change in kept:
            click.echo(f"  {kept_line(change, again + passed)}")
        if len({change.blocked for change in kept}) > 1:
            flags = sorted({f"--{change.blocked}" for change in kept} | {f"--{flag}" for flag in allow})
            click.echo(f"To delete them all: {again} {' '.join(flags)}")
    if left:
        flags = "".join(f" --{flag}" for flag in sorted(allow))
        protected = sorted(name for name, result in results.items()
                           if any(not change.keeps_data for change in result.refused))
        first = (f"change the {env} manifest as each note says, run `orchestrator apply {env} "
                 f"{' '.join(f'--target {name}' for name in protected)}`, then" if protected else
                 "fix what failed, then")
        raise OrchestratorError(f"destroy {env} left {len(left)} thing(s) it was asked to remove:\n  " +
                                "\n  ".join(left) + f"\nTo remove them: {first} run `{again}{flags}`")


@cli.command()
@ENV_ARG
@click.option("--dry-run", is_flag=True, help="Only list what would be removed; change nothing.")
@LOCK_TIMEOUT_OPT
@allow_flags
@click.pass_obj
def prune(options: Options, env: str, dry_run: bool, lock_timeout, delete_data, delete_secrets):
    """Remove what carries ENV's ownership tags but the manifest no longer describes."""
    from orchestrator.engine import Engine
    from orchestrator.render import plan_text
    allow = allowed(delete_data, delete_secrets)
    if dry_run:
        manifest = load(options, env)
        aws = connect(options, manifest)
        engine = Engine(manifest, aws, build_graph(), store=store_for(aws, manifest), allow=allow)
        results = engine.prune(dry_run=True)
        click.echo(plan_text(f"Prune (dry run) for {manifest.prefix} ({manifest.region}):", results,
                             nothing="Nothing to prune"))
        report_unclassified(engine, aws, manifest)
        failures = failed_steps(results)
        if failures:
            raise OrchestratorError(f"could not look at {len(failures)} step(s): {', '.join(failures)} (see above)")
    else:
        def work(engine):
            results = engine.prune(dry_run=False)
            click.echo(plan_text(f"Pruned {engine.manifest.prefix} ({engine.manifest.region}):", results,
                                 nothing="Nothing to prune"))
            report_unclassified(engine, engine.aws, engine.manifest)
            return results

        run_locked(options, env, "prune", (), lock_timeout, work, allow=allow)


def report_unclassified(engine, aws, manifest) -> None:
    """Resources carrying the environment's tags that no step describes: listed, never removed."""
    from orchestrator.engine import undescribed
    from orchestrator.tags import owned_arns
    unknown = undescribed(owned_arns(aws, manifest.app, manifest.environment), engine.observed)
    unknown = sorted(set(unknown) - engine.gone(unknown))
    if unknown:
        click.echo(f"{len(unknown)} resource(s) carry {manifest.environment}'s ownership tags but no step describes "
                   "them (left alone; remove them by hand if they are not needed):")
        click.echo("\n".join(f"  {arn}" for arn in unknown))


@cli.command()
@ENV_ARG
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.option("--live", is_flag=True, help="Also compare AWS with the manifest now (read-only): drift per step.")
@click.option("--outputs", "full", is_flag=True, help="Each step with its outputs (ids, ARNs, names) as well.")
@click.pass_obj
def status(options: Options, env: str, as_json: bool, live: bool, full: bool):
    """What runs in ENV and how it is: the lock, the steps, the services and their health, the
    alarms, the last runs (who, when, what). Read-only."""
    from orchestrator.render import drift_of, status_text
    manifest = load(options, env)
    aws = connect(options, manifest)
    store = store_for(aws, manifest)
    if not store.exists():
        records, holder, runs, now = {}, None, [], 0.0  # no lock to time
    else:
        # The lock's times are AWS's (the state store's docstring): compare them with AWS's now.
        records, holder, runs = store.steps(), store.lock_holder(), store.runs(5)
        now = store.aws_now()
    graph = build_graph()
    records = {name: records[name] for name in graph.order() if name in records}  # dependency order
    drift = None
    if live:
        from orchestrator.engine import Engine
        drift = drift_of(Engine(manifest, aws, graph, store=store).plan())
    views = live_views(aws, manifest, graph, records)
    if as_json:
        click.echo(json.dumps({"environment": env, "lock": holder, "steps": records, "runs": runs, "live": views,
                               **({"drift": drift} if live else {})}, indent=2, default=str))
    else:
        click.echo(status_text(env, records, holder, runs, now, drift, full=full, views=views,
                               unapplied=[name for name in graph.order() if name not in records]))


def live_views(aws, manifest, graph, records: dict) -> dict:
    """What each applied step that offers a live view (`Step.live`) reports now: alarm states,
    URLs. Read-only."""
    from orchestrator.context import StepContext
    views = {name: graph.steps[name].live(StepContext(aws=aws, manifest=manifest, step=name),
                                          records[name].get("outputs") or {})
             for name in graph.order() if name in records}
    return {name: view for name, view in views.items() if view}


@cli.command()
@ENV_ARG
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.pass_obj
def outputs(options: Options, env: str, as_json: bool):
    """Each step's outputs: ALB DNS name, role ARNs, ids."""
    manifest = load(options, env)
    store = store_for(connect(options, manifest), manifest)
    records = store.steps() if store.exists() else {}
    order = build_graph().order()
    values = {name: records[name]["outputs"] for name in order if records.get(name, {}).get("outputs")}
    if as_json:
        click.echo(json.dumps(values, indent=2, default=str))
        return
    if not values:
        click.echo(f"{env}: nothing applied yet")
    for name, step_outputs in values.items():
        click.echo(f"{name}:")
        for key, value in sorted(step_outputs.items()):
            click.echo(f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}")


@cli.command()
@ENV_ARG
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "mermaid"]), default="text", show_default=True)
@click.pass_obj
def graph(options: Options, env: str, fmt: str):
    """The step graph."""
    load(options, env)
    click.echo(build_graph().render(fmt))


@cli.command()
@ENV_ARG
@click.option("--account-id", default=None, help="The account to scope to (default: the manifest's, else the "
                                                 "credentials' account).")
@click.pass_obj
def policy(options: Options, env: str, account_id: str | None):
    """The deploy role's least-privilege IAM policies for ENV, as JSON: managed policies by name
    (the statements outgrow one policy), to create and attach to the role that deploys ENV."""
    from orchestrator import permissions, state

    manifest = load(options, env)
    account_id = account_id or manifest.account_id or connect(options, manifest).account_id()
    scope = permissions.Scope(account_id, manifest.region, permissions.partition_of(manifest.region))
    graph = build_graph()
    document = permissions.deploy_policy(manifest, scope, [graph.steps[name] for name in graph.order()],
                                         state.permissions(manifest.state.table, scope))
    click.echo(json.dumps(permissions.managed_policies(document, f"{manifest.prefix}-deploy"), indent=2))


@cli.command()
@ENV_ARG
@click.option("--force", is_flag=True, help="Confirm: break the lock even if its holder may still run.")
@click.pass_obj
def unlock(options: Options, env: str, force: bool):
    """Break a stale lock of ENV."""
    if not force:
        raise click.UsageError("unlock breaks another run's lock: pass --force to confirm")
    manifest = load(options, env)
    store = store_for(connect(options, manifest), manifest)
    holder = store.break_lock() if store.exists() else None
    if holder:
        click.echo(f"broke the lock of run {holder.get('run_id')} ({holder.get('user')}@{holder.get('host')}, "
                   f"{holder.get('command')})")
    else:
        click.echo(f"{env} was not locked")


@cli.command()
def schema():
    """The manifest's JSON Schema, for editors."""
    from orchestrator.manifest import json_schema
    click.echo(json.dumps(json_schema(), indent=2))


@cli.group()
def sandbox():
    """The local AWS emulator (a moto server on 127.0.0.1)."""


@sandbox.command("start", help="Start the sandbox in the background (if it does not run yet), with demo "
                                 "certificates for the domains the manifests name and the demo image tags.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: a free port.")
@click.pass_obj
def sandbox_start(options: Options, port):
    from orchestrator import sandbox as box
    record = box.start(port)
    state = "already running" if record.get("already_running") else "started"
    click.echo(f"sandbox {state} at {record['url']} (pid {record['pid']}); point commands at it with "
               "`orchestrator --sandbox COMMAND`, or `export ORCHESTRATOR_SANDBOX=1` for every command")
    certificates = box.issue_demo_certificates(record, options.manifests)
    if certificates:
        click.echo("its ACM holds demo certificates for " +
                   ", ".join(f"{domain} ({environment})" for environment, domain in certificates.items()))
    click.echo(f"each new image repository holds the demo tags {box.EMULATOR_SETTINGS[box.SEED_TAGS]}")


@sandbox.command("stop", help="Stop the sandbox; its AWS state is gone with it.")
def sandbox_stop():
    from orchestrator import sandbox as box
    record = box.stop()
    if not record:
        click.echo("no sandbox was running")
    elif record["killed"]:
        click.echo(f"sandbox at {record['url']} did not stop when asked, so it was killed; it is stopped")
    else:
        click.echo(f"sandbox at {record['url']} stopped")


@sandbox.command("status", help="Whether the sandbox runs, and where (exit 1 when it does not).")
def sandbox_status():
    from orchestrator import sandbox as box
    record = box.read_record()
    if box.is_alive(record):
        click.echo(f"sandbox running at {record['url']} (pid {record['pid']})")
    else:
        click.echo("sandbox not running")
        sys.exit(1)


# -- verify, loadtest, drill: prove a deployed environment works (package ops/) -----------------


def deployed_environment(options: Options, env: str, url: str | None = None):
    from ops.platform import deployed
    manifest = load(options, env)
    return deployed(connect(options, manifest), manifest, url)


URL_OPT = click.option("--url", default=None, metavar="URL",
                       help="Reach the load balancer at this base URL instead of its DNS name (a domain that matches "
                            "its certificate, a local server).")


def print_report(report, as_json: bool) -> None:
    """The report as a table or JSON; exit 1 when a check failed."""
    click.echo(report.as_json() if as_json else report.as_table())
    if report.failures:
        sys.exit(1)


@cli.command()
@ENV_ARG
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--wait", "wait_seconds", type=click.FloatRange(0, 1800), default=180.0, show_default=True,
              help="Seconds to wait for the probe request's trace, log lines and metric to arrive.")
@click.option("--allow-empty", is_flag=True, help="List dashboard panels without data, without failing.")
@URL_OPT
@click.pass_obj
def verify(options: Options, env: str, as_json: bool, wait_seconds: float, allow_empty: bool, url: str | None):
    """Check that the deployed ENV works end to end: load balancer, services, a traced request in
    Jaeger, Loki and Prometheus, dashboards, alert rules, contact points, CloudWatch alarms.
    Read-only but for one request; exit 1 when a check fails."""
    from ops.verify import verify as run_verify
    print_report(run_verify(deployed_environment(options, env, url), wait_seconds=wait_seconds, allow_empty=allow_empty),
                 as_json)


def parse_duration(ctx, _param, value):
    import re
    if value is not None and not re.fullmatch(r"[1-9]\d*(s|m|h)", value):
        raise click.BadParameter(f"{value!r} is not a duration such as 90s, 5m or 1h")
    return value


ALLOW_PROD_OPT = click.option("--allow-prod", is_flag=True,
                              help="Run against an environment that refuses destroy (prod) as well.")


@cli.command()
@ENV_ARG
@click.option("--vus", type=click.IntRange(1), default=None,
              help="Peak virtual users (the stages scale to it; at most loadtest.max_vus).")
@click.option("--duration", default=None, callback=parse_duration, metavar="DURATION",
              help="Total duration, e.g. 90s or 5m (the stages scale to it; at most loadtest.max_duration).")
@ALLOW_PROD_OPT
@URL_OPT
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to save the k6 script, its summary, the samples and the timeline "
                   "(default .orchestrator/loadtest/ENV-TIME).")
@click.pass_obj
def loadtest(options: Options, env: str, vus, duration, allow_prod: bool, url, as_json: bool, out_dir):
    """Run k6 against ENV's load balancer (routes, stages and thresholds from the manifest's
    loadtest section) while sampling ECS, autoscaling and CloudWatch; exit 1 when a threshold fails."""
    from ops.loadtest import as_text, loadtest as run_loadtest
    from ops.platform import refuse_prod
    refuse_prod(load(options, env), allow_prod, "loadtest")
    environment = deployed_environment(options, env, url)
    out_dir = out_dir or Path(".orchestrator", "loadtest", f"{env}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_loadtest(environment, vus=vus, duration=duration, out_dir=out_dir)
    click.echo(json.dumps(result, indent=2) if as_json else as_text(result))
    if not result["passed"]:
        sys.exit(1)


@cli.command()
@ENV_ARG
@click.argument("scenario", type=click.Choice(["notify", "task-failure", "alert"]))
@ALLOW_PROD_OPT
@URL_OPT
@click.option("--timeout", type=click.FloatRange(1, 3600), default=900.0, show_default=True,
              help="Seconds to wait for recovery before the drill fails.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.pass_obj
def drill(options: Options, env: str, scenario: str, allow_prod: bool, url, timeout: float, as_json: bool):
    """Rehearse a failure on ENV and report what happened: notify (a test notification through
    every contact point and the SNS topic), task-failure (stop one app task; time to replacement
    and healthy targets), alert (errors on loadtest.drill_route until the error-rate rule fires, then
    until it resolves). Refuses prod unless --allow-prod; exit 1 when a check fails."""
    from ops.drill import drill as run_drill
    from ops.platform import refuse_prod
    refuse_prod(load(options, env), allow_prod, f"drill {scenario}")
    print_report(run_drill(deployed_environment(options, env, url), scenario, timeout=timeout), as_json)
