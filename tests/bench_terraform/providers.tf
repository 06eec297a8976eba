terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = { source = "hashicorp/aws", version = "5.100.0" }
  }
}

# Against a local moto server: fake keys, no credential check or instance metadata, path-style S3, and
# every service this configuration uses sent to var.endpoint.
provider "aws" {
  region                      = "us-east-1"
  access_key                  = "bench"
  secret_key                  = "bench"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true

  endpoints {
    appautoscaling   = var.endpoint
    cloudwatch       = var.endpoint
    ec2              = var.endpoint
    ecr              = var.endpoint
    ecs              = var.endpoint
    efs              = var.endpoint
    elbv2            = var.endpoint
    iam              = var.endpoint
    kms              = var.endpoint
    logs             = var.endpoint
    s3               = var.endpoint
    secretsmanager   = var.endpoint
    servicediscovery = var.endpoint
    sns              = var.endpoint
    sts              = var.endpoint
  }

  default_tags {
    tags = {
      project       = "gamepulse"
      owner         = "platform-team"
      "cost-center" = "games"
      environment   = "dev"
    }
  }
}
