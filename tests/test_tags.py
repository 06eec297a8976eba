"""The tag policy: only our keys are managed; tags others added are never removed."""
from orchestrator import tags


def test_reconcile_sets_missing_and_changed_keys_only():
    current = {"orchestrator:app": "gamepulse", "team": "old", "cost-center": "42"}
    wanted = {"orchestrator:app": "gamepulse", "orchestrator:env": "dev", "team": "games"}
    assert tags.reconcile(current, wanted) == {"orchestrator:env": "dev", "team": "games"}


def test_reconcile_never_removes_foreign_tags():
    current = {"orchestrator:env": "dev", "cost-center": "42", "compliance:owner": "sec"}
    assert tags.reconcile(current, {"orchestrator:env": "dev"}) == {}


def test_reconcile_never_touches_aws_keys():
    current = {"aws:cloudformation:stack-name": "theirs"}
    wanted = {"aws:cloudformation:stack-name": "ours", "aws:new": "x", "orchestrator:env": "dev"}
    assert tags.reconcile(current, wanted) == {"orchestrator:env": "dev"}


def test_reconcile_of_nothing_wanted_is_nothing():
    assert tags.reconcile({"a": "1"}, {}) == {}
    assert tags.reconcile({}, {"a": "1"}) == {"a": "1"}
