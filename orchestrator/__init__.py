"""GamePulse orchestrator: deploys the GamePulse platform onto AWS ECS Fargate with boto3."""

__version__ = "0.1.0"
