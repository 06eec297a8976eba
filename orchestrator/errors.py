"""Errors the command line turns into a message and an exit code (see DESIGN.md)."""
from __future__ import annotations


class OrchestratorError(Exception):
    """A failure the user can act on; its message is shown as is. Exit code 1."""

    exit_code = 1


class ManifestError(OrchestratorError):
    """One or more manifest problems, each `file:line: field: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class LockHeld(OrchestratorError):
    """Another run holds the environment's lock. Exit code 3."""

    exit_code = 3


class LockLost(OrchestratorError):
    """This run's lock was taken over (its lease expired); it stops writing at once."""


class StepFailed(OrchestratorError):
    """A step failed; the message names the step and the AWS error (never a secret)."""
