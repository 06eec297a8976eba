"""The step contract's dispatch: `Step.apply` runs the handler registered for a change's action
and kind; a handler with another signature, or a change no handler takes, is a ContractError
naming the step, the action and the kind."""
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
