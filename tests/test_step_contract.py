"""The step contract's dispatch: `Step.apply` runs the handler registered for a change's action
and kind; a handler with another signature, or a change no handler takes, is a ContractError
naming the step, the action and the kind."""
import dataclasses

import pytest

from orchestrator.model import Change, ContractError, Step


class Counter(Step):
    name = "counter"

    def _create_thing(self, ctx, change, observed):
        observed.append(("created", change.name, change.payload))

    def _delete_thing(self, ctx, change, observed):
        observed.remove(("created", change.name, change.payload))

    handlers = {("create", "thing"): _create_thing, ("delete", "thing"): _delete_thing}


def test_apply_runs_the_handler_registered_for_the_action_and_kind():
    facts = []
    Counter().apply(None, Change("create", "thing", "a", payload=1), facts)
    assert facts == [("created", "a", 1)]
    Counter().apply(None, Change("delete", "thing", "a", payload=1), facts)
    assert facts == []


def test_a_change_no_handler_takes_names_the_step_action_and_kind():
    with pytest.raises(ContractError, match="step counter has no handler for update thing"):
        Counter().apply(None, Change("update", "thing", "a"), [])


def test_a_handler_with_another_signature_is_refused_when_the_class_is_made():
    with pytest.raises(ContractError, match=r"handler _create_thing for create thing takes \(self, ctx, payload\)"):
        class Broken(Step):
            name = "broken"

            def _create_thing(self, ctx, payload):
                pass

            handlers = {("create", "thing"): _create_thing}


def test_a_handler_for_an_action_that_does_not_exist_is_refused():
    with pytest.raises(ContractError, match="action 'upsert'"):
        class Broken(Step):
            name = "broken"

            def _upsert_thing(self, ctx, change, observed):
                pass

            handlers = {("upsert", "thing"): _upsert_thing}


# -- values not known yet ----------------------------------------------------------------------

def marker_uses(path) -> list[str]:
    """Where a module names `KNOWN_AFTER_APPLY` or spells its text outside a docstring: building
    or comparing the rendered marker instead of making an `Unknown` or asking `is_unknown`."""
    import ast

    from orchestrator.model import KNOWN_AFTER_APPLY

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "KNOWN_AFTER_APPLY" \
                or isinstance(node, ast.Attribute) and node.attr == "KNOWN_AFTER_APPLY":
            found.append(f"line {node.lineno}: KNOWN_AFTER_APPLY")
        elif isinstance(node, ast.alias) and node.name == "KNOWN_AFTER_APPLY":
            found.append(f"line {node.lineno}: imports KNOWN_AFTER_APPLY")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and KNOWN_AFTER_APPLY in node.value:
            found.append(f"line {node.lineno}: the string {node.value!r}")
    return found


def test_only_the_model_knows_how_an_unknown_value_is_spelled():
    """Steps and the engine make `Unknown`s and ask `is_unknown`: no string compare or literal."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    modules = sorted(path for folder in ("orchestrator", "steps", "ops") for path in (root / folder).glob("*.py"))
    uses = {str(path.relative_to(root)): marker_uses(path) for path in modules
            if path.relative_to(root).as_posix() != "orchestrator/model.py"}
    assert len(uses) > 20
    assert not {module: found for module, found in uses.items() if found}


def test_the_check_finds_a_compare_an_import_and_a_literal(tmp_path):
    source = tmp_path / "step.py"
    source.write_text('"""Mentions (known after apply) in its docstring: fine."""\n'
                      "from orchestrator.model import KNOWN_AFTER_APPLY\n"
                      "def f(value):\n"
                      "    return value == model.KNOWN_AFTER_APPLY or value == '(known after apply)'\n")
    assert marker_uses(source) == ["line 2: imports KNOWN_AFTER_APPLY", "line 4: KNOWN_AFTER_APPLY",
                                   "line 4: the string '(known after apply)'"]


OUTPUT_STEPS = ("vpc", "ecr", "secrets", "iam", "efs", "ecs", "alb", "dashboards")


@pytest.mark.parametrize("name", OUTPUT_STEPS)
def test_an_output_not_known_yet_is_an_unknown_naming_step_and_field(name, manifest):
    """Before anything exists (a plan from nothing), each output not known yet is an `Unknown`
    whose source is the step and the output's field (and the key, in a map), or the upstream
    output it was built from: what the client factory names when a request would carry it."""
    import importlib
    import typing

    from orchestrator.model import Unknown, is_unknown
    from tests import harness

    step = importlib.import_module(f"steps.{name}").STEP()
    facts_class = typing.get_type_hints(step.observe)["return"]  # what observe finds: here nothing
    nothing = facts_class(**({"recovery_window_days": 7} if name == "secrets" else {}))
    outputs = step.outputs(step.desired(manifest, harness.inputs(step)), nothing)

    unknown = []
    for output in dataclasses.fields(outputs):
        value = getattr(outputs, output.name)
        items = (value.items() if isinstance(value, dict) else
                 ((None, item) for item in value) if isinstance(value, list) else [(None, value)])
        for key, item in items:
            if is_unknown(item):
                unknown.append((f"{name}.{output.name}" + (f".{key}" if key is not None else ""), item))
    assert unknown, f"{name}: no output is unknown before anything exists"
    for where, item in unknown:
        assert isinstance(item, Unknown), f"{where} is the bare marker, not an Unknown"
        assert item.source == where or item.source.split(".")[0] in step.depends_on, (where, item.source)


def test_an_unknown_kept_in_a_record_or_saved_plan_reads_back_as_an_unknown_naming_the_output():
    """Records and saved plans are JSON: an `Unknown` is written as the marker it renders as, and
    `Inputs` turns the marker back into an `Unknown` naming where it stands."""
    import json

    from orchestrator.model import FieldDiff, Inputs, Unknown, as_plain, is_unknown

    written = json.loads(json.dumps(as_plain({"target_groups": {"api": Unknown("alb.target_groups.api")},
                                              "diff": FieldDiff("subnets", None, [Unknown("vpc.x")])})))
    assert written["target_groups"]["api"] == "(known after apply)" and is_unknown(written["diff"]["new"][0])
    inputs = Inputs("123456789012", "us-east-1", {"alb": written}, declared={"alb": ("target_groups",)})
    read = inputs.output("alb", "target_groups")["api"]
    assert isinstance(read, Unknown) and read.source == "alb.target_groups.api"


def test_a_list_output_not_known_yet_is_as_many_unknowns_as_asked_never_its_characters():
    from orchestrator.model import Inputs, Unknown

    declared = {"vpc": ("private_subnet_ids",)}
    known = Inputs("123456789012", "us-east-1", {"vpc": {"private_subnet_ids": ["subnet-a", "subnet-b"]}},
                   declared=declared)
    assert known.items("vpc", "private_subnet_ids", count=3) == ["subnet-a", "subnet-b"]
    unknown = Inputs("123456789012", "us-east-1", {}, declared=declared).items("vpc", "private_subnet_ids", count=2)
    assert len(unknown) == 2 and all(isinstance(item, Unknown) and item.source == "vpc.private_subnet_ids"
                                     for item in unknown)
