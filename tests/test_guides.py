"""The guides (docs/*.md and README.md) stay true to the tool: every `orchestrator` command in
their code blocks parses with the real command line and names an environment that exists, every
manifest key they name exists in the manifest schema, the walkthrough runs for real against a
moto server, and the README's sandbox values are the Makefile's."""
from __future__ import annotations

import re
import shlex
import subprocess
import types
import typing
from pathlib import Path

import click
import pytest
import yaml
from pydantic import BaseModel

from orchestrator.cli import cli
from orchestrator.schema import Manifest
from tests.conftest import MANIFESTS, ROOT
from tests.test_cli import run

GUIDES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
ENVIRONMENTS = {path.stem for path in MANIFESTS.glob("*.yaml")} - {"gamepulse"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
WALKTHROUGH = re.compile(r"<!-- walkthrough -->\s*\n```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: A dotted name in backticks whose first part is a manifest section: `efs.backups`.
KEY_PATH = re.compile(r"`([a-z_]+(?:\.[A-Za-z0-9_-]+)+)`")


def code_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def command_lines(block: str) -> list[str]:
    """The block's lines, joined at trailing backslashes, without a prompt or a YAML `run:` before them."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line.strip().removeprefix("$ ").removeprefix("- run: ").removeprefix("run: ") for line in lines]


def orchestrator_commands(line: str) -> list[list[str]]:
    """The argument lists of each `orchestrator` invocation on a shell line (after any
    VAR=value prefix, up to the next shell operator). Shell variables stand for any word."""
    if not re.search(r"(^|[\s;|&(/])orchestrator\s", line):
        return []  # not lexed: prose and output lines need not be valid shell
    line = re.sub(r"\$\{?\w+\}?", "X", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, current, at_start = [], None, True
    for word in lexer:
        if set(word) <= set("|&;<>()"):  # a shell operator: a new command may start
            current, at_start = None, True
        elif current is not None:
            current.append(word)
        elif at_start and (word == "orchestrator" or word.endswith("/bin/orchestrator")):
            current = []
            commands.append(current)
        elif at_start and not re.fullmatch(r"\w+=.*", word):  # VAR=value before a command is skipped
            at_start = False
    return commands


def guide_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in GUIDES:
        for block in code_blocks(path):
            for line in command_lines(block):
                found += [(f"{path.name}: {line}", args) for args in orchestrator_commands(line)]
    return found


def parse(args: list[str]) -> click.Context:
    """The innermost command's context, parsed as the real command line would (options,
    arguments, their types and callbacks), without running anything."""
    ctx = cli.make_context("orchestrator", list(args))
    group = cli
    while isinstance(group, click.Group):
        rest = [*ctx._protected_args, *ctx.args]  # as click.Group.invoke resolves the sub-command
        name, command, rest = group.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
        group = command
    return ctx


COMMANDS = guide_commands()


def test_the_guides_have_commands_for_every_operation():
    names = {parse(args).command.name for _, args in COMMANDS}
    assert {"validate", "plan", "apply", "status", "outputs", "destroy", "prune", "unlock", "policy",
            "graph", "schema", "verify", "loadtest", "drill"} <= names, names


@pytest.mark.parametrize("where, args", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_every_command_in_the_guides_parses_and_names_an_environment(where, args):
    ctx = parse(args)
    if "env" in ctx.params:
        assert ctx.params["env"] in ENVIRONMENTS, f"{where}: no manifests/{ctx.params['env']}.yaml"


def test_a_wrong_command_in_a_guide_would_be_caught():
    for wrong in (["plan", "dev", "--detailed-exit-code"], ["apply", "dev", "--image-tag", "1.4.2"],
                  ["sandbox", "restart"], ["destroy"]):
        with pytest.raises(click.UsageError):
            parse(wrong)
    assert orchestrator_commands("ORCHESTRATOR_SANDBOX=1 .venv/bin/orchestrator plan dev --json > plan.json # x") \
        == [["plan", "dev", "--json"]]


def test_every_yaml_block_in_the_guides_is_valid_yaml():
    blocks = [(path.name, block) for path in GUIDES
              for block in re.findall(r"^```yaml\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL)]
    assert any("pull_request" in block for _, block in blocks), "the pipeline example"
    for name, block in blocks:
        assert yaml.safe_load(block), f"{name}: {block[:80]}"


# -- manifest keys ------------------------------------------------------------------------------


def key_exists(model: type[BaseModel], path: list[str]) -> bool:
    """Whether `path` leads through the schema's models; a map (`images.repositories`) takes
    any key, a list any item."""
    annotation: typing.Any = model
    for part in path:
        annotation = unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                return False
            annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return False
    return True


def unwrap(annotation):
    """`X | None` → X; `list[X]` → X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        elif origin is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


def mentioned_keys() -> list[tuple[str, str]]:
    sections = set(Manifest.model_fields)
    return [(path.name, key) for path in GUIDES for key in KEY_PATH.findall(path.read_text())
            if key.split(".")[0] in sections]


def test_every_manifest_key_a_guide_names_exists():
    keys = mentioned_keys()
    assert {"efs.backups", "state.table", "load_balancer.certificate_arn",
            "network.nat_gateways"} <= {key for _, key in keys}
    missing = [f"{name}: `{key}`" for name, key in keys if not key_exists(Manifest, key.split("."))]
    assert not missing, "keys the manifest schema does not have:\n" + "\n".join(missing)


def test_a_key_the_schema_lacks_is_caught():
    assert key_exists(Manifest, ["images", "repositories", "gamepulse", "tag"])
    assert key_exists(Manifest, ["services", "tasks", "loki", "capacity_provider"])
    assert not key_exists(Manifest, ["efs", "backup"])
    assert not key_exists(Manifest, ["alerting", "thresholds", "cpu"])


# -- the walkthrough ----------------------------------------------------------------------------


def walkthrough() -> list[tuple[list[str], int]]:
    """Each command of the marked block with the exit code its comment states (`# exit 2`), else 0."""
    blocks = [block for path in GUIDES for block in WALKTHROUGH.findall(path.read_text())]
    assert len(blocks) == 1, "one block after <!-- walkthrough --> in the guides"
    steps = []
    for line in command_lines(blocks[0]):
        for args in orchestrator_commands(line):
            code = re.search(r"#.*\bexit (\d)", line)
            steps.append((args, int(code.group(1)) if code else 0))
    return steps


def test_the_walkthrough_runs_command_by_command(endpoint):
    steps = walkthrough()
    names = [args[0] for args, _ in steps]
    assert {"apply", "status", "plan", "destroy"} <= set(names), names
    assert any("--image-tag" in args for args, _ in steps) and any("--destroy" in args for args, _ in steps)
    for args, expected in steps:
        result = run(endpoint, *args)
        assert result.returncode == expected, (f"`orchestrator {' '.join(args)}` exited {result.returncode}, "
                                               f"the guide says {expected}:\n{result.stdout[-2000:]}"
                                               f"{result.stderr[-2000:]}")


@pytest.mark.dev_applied
def test_the_drift_example_is_what_plan_prints(endpoint):
    """The three changes by hand that operations.md describes, and the plan's lines for them."""
    import boto3
    [example] = re.findall(r"<!-- drift -->\s*\n```[^\n]*\n(.*?)^```", (ROOT / "docs" / "operations.md").read_text(),
                           re.MULTILINE | re.DOTALL)
    aws = {"region_name": "us-east-1", "endpoint_url": endpoint}
    ec2, ecr, elb = (boto3.client(name, **aws) for name in ("ec2", "ecr", "elbv2"))
    [group] = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["gamepulse-dev-app"]}])[
        "SecurityGroups"]
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ecr.delete_lifecycle_policy(repositoryName="gamepulse")
    [target_group] = [group for group in elb.describe_target_groups()["TargetGroups"]
                      if group["TargetGroupName"].startswith("gamepulse-dev-gamepulse-")]
    elb.modify_target_group(TargetGroupArn=target_group["TargetGroupArn"], HealthCheckPath="/healthz")

    plan = run(endpoint, "plan", "dev", "--target", "alb", "--target", "ecr")
    assert plan.returncode == 0, plan.stderr[-3000:]
    for line in example.splitlines():
        assert line.removesuffix("…") in plan.stdout, f"operations.md shows {line!r}; plan printed:\n{plan.stdout}"


# -- README and Makefile ------------------------------------------------------------------------


def assignments(text: str) -> dict[str, str]:
    return {name: value for name, value in re.findall(r"\b(GAMEPULSE_[A-Z_]+)='([^']*)'", text)}


def demo_values() -> dict[str, str]:
    """The demo's secret values: exported by the Makefile's `demo` target."""
    makefile = (ROOT / "Makefile").read_text()
    return dict(re.findall(r"^demo: export (GAMEPULSE_[A-Z_]+) := (.*)$", makefile, re.MULTILINE))


def test_the_readme_sandbox_values_are_the_makefiles():
    demo_env = demo_values()
    assert set(demo_env) == {"GAMEPULSE_DEV_DB_CONNECTION", "GAMEPULSE_DEV_SLACK_WEBHOOK"}
    readme = assignments("\n".join(code_blocks(ROOT / "README.md")))
    assert readme == demo_env


def test_make_demo_never_shows_the_demo_secret_values():
    """make echoes each recipe line before it runs it: the values must not stand on one."""
    shown = subprocess.run(["make", "-n", "--always-make", "demo"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert "orchestrator --sandbox apply dev" in shown
    for value in demo_values().values():
        assert value not in shown
