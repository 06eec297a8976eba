"""Test-only: on the PYTHONPATH of the command lines the tests run (tests/test_cli.py `run`), so
that IAM changes reach ECS at once, as they do in moto: a run that changed a role does not sit
out IAM's propagation time. conftest's `no_waiting` does the same for in-process runs. The one
end-to-end apply from nothing runs without it and checks the wait."""
import steps.iam

steps.iam.IAM_PROPAGATION_SECONDS = 0.0
