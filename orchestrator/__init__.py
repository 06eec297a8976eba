"""GamePulse orchestrator: deploys the GamePulse platform onto AWS ECS Fargate with boto3."""

import time

__version__ = "0.1.0"

#: When this process loaded the orchestrator's code: a file of it changed later on disk is not
#: the code that runs (steps.bundles keeps rendered files only for code loaded unchanged).
LOADED_AT_NS = time.time_ns()
