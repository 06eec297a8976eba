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


class Interrupted(OrchestratorError):
    """The user pressed Ctrl-C: a step stops before its next change. Exit code 130."""

    exit_code = 130


class UsageError(OrchestratorError):
    """The command line asks for something that does not exist (an unknown step). Exit code 2."""

    exit_code = 2


class StepFailed(OrchestratorError):
    """A step failed; the message names the step and the AWS error (never a secret)."""


class NotApplied(OrchestratorError):
    """An apply stopped by a decision rather than a failure: a person declined at the prompt,
    or a saved plan no longer holds. `outcome` is what the run record says. Exit code 1."""

    def __init__(self, message: str, outcome: str):
        super().__init__(message)
        self.outcome = outcome
