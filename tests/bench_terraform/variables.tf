# Inputs of the Terraform reference configuration (the bench writes them in terraform.tfvars.json).

variable "endpoint" {
  description = "URL every AWS service is reached at (the bench's counting proxy in front of a moto server)."
  type        = string
}

variable "db_connection" {
  description = "Value of the secret gamepulse/dev/db-connection (the orchestrator reads it from the environment)."
  type        = string
  sensitive   = true
}

variable "slack_webhook" {
  description = "Value of the secret gamepulse/dev/slack-webhook."
  type        = string
  sensitive   = true
}

variable "grafana_admin_password" {
  description = "Value of the secret gamepulse/dev/grafana-admin (the orchestrator generates it once; only the aws provider is installed here, so no random_password)."
  type        = string
  sensitive   = true
}

variable "bundle_files" {
  description = "The services' configuration bundles, as the orchestrator renders them: S3 key in the config bucket => file content."
  type        = map(string)
}

variable "bundles" {
  description = "Each bundle's container as the orchestrator renders it (steps/bundles.py): key prefix of its files, image, command, ports, folders, environment, secrets (variable => secret name), health check and memory (0: none of its own)."
  type = map(object({
    prefix       = string
    image        = string
    command      = list(string)
    ports        = list(number)
    config_dir   = string
    data_dir     = string
    environment  = map(string)
    secrets      = map(string)
    health_check = list(string)
    memory       = number
  }))
}

variable "app_environment" {
  description = "The app container's environment (the orchestrator's, OpenTelemetry settings included)."
  type        = map(string)
}
