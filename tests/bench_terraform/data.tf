# Steps ecr, storage, secrets and efs: images, buckets, secrets, the shared file system.

locals {
  account = "123456789012"                        # manifests/dev.yaml's account_id (moto's)
  buckets = { config = null, "loki-chunks" = 30 } # key => days before objects expire (Loki: the log retention)
  secrets = {
    "db-connection" = { description = "GamePulse database connection string", value = var.db_connection }
    "grafana-admin" = { description = "Grafana admin password", value = var.grafana_admin_password }
    "slack-webhook" = { description = "Slack webhook for alert notifications", value = var.slack_webhook }
  }
  access_points = {
    prometheus = { path = "/prometheus", id = 65534 }
    grafana    = { path = "/grafana", id = 472 }
  }
}

resource "aws_ecr_repository" "gamepulse" {
  name                 = "${local.prefix}-gamepulse"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "AES256"
  }
}

resource "aws_ecr_lifecycle_policy" "gamepulse" {
  repository = aws_ecr_repository.gamepulse.name
  policy = jsonencode({ rules = [
    { rulePriority = 1, description = "expire untagged images after 7 days", action = { type = "expire" },
    selection = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 7 } },
    { rulePriority = 2, description = "keep the last 30 tagged images", action = { type = "expire" },
    selection = { tagStatus = "tagged", tagPatternList = ["*"], countType = "imageCountMoreThan", countNumber = 30 } },
  ] })
}

# The manifest names the tag; the task definition runs its digest (as the orchestrator does).
data "aws_ecr_image" "gamepulse" {
  repository_name = aws_ecr_repository.gamepulse.name
  image_tag       = "1.4.1"
}

resource "aws_s3_bucket" "main" {
  for_each = local.buckets
  bucket   = "${local.prefix}-${each.key}-${local.account}"
}

resource "aws_s3_bucket_public_access_block" "main" {
  for_each                = aws_s3_bucket.main
  bucket                  = each.value.id
  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "main" {
  for_each = aws_s3_bucket.main
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "main" {
  for_each = aws_s3_bucket.main
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "main" {
  for_each = aws_s3_bucket.main
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "main" {
  for_each = aws_s3_bucket.main
  bucket   = each.value.id
  rule {
    id     = "orchestrator"
    status = "Enabled"
    filter {
      prefix = ""
    }
    dynamic "expiration" {
      for_each = local.buckets[each.key] == null ? [] : [local.buckets[each.key]]
      content {
        days = expiration.value
      }
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = aws_s3_bucket.main
  bucket   = each.value.id
  policy = jsonencode({ Version = "2012-10-17", Statement = [{
    Sid       = "DenyInsecureTransport", Effect = "Deny", Principal = "*", Action = "s3:*",
    Resource  = [each.value.arn, "${each.value.arn}/*"],
    Condition = { Bool = { "aws:SecureTransport" = "false" } }
  }] })
  # moto takes every request as insecure: with the policy in place no object could be written.
  depends_on = [aws_s3_object.bundle]
}

# The services' configuration bundles (config bucket, `<service>/<content hash>/<file>`).
resource "aws_s3_object" "bundle" {
  for_each = var.bundle_files
  bucket   = aws_s3_bucket.main["config"].id
  key      = each.key
  content  = each.value
}

resource "aws_secretsmanager_secret" "main" {
  for_each                = local.secrets
  name                    = "gamepulse/dev/${each.key}"
  description             = each.value.description
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "main" {
  for_each      = local.secrets
  secret_id     = aws_secretsmanager_secret.main[each.key].id
  secret_string = each.value.value
}

resource "aws_efs_file_system" "data" {
  creation_token   = "${local.prefix}-data"
  encrypted        = true
  performance_mode = "generalPurpose"
  throughput_mode  = "bursting"
  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }
  tags = { Name = "${local.prefix}-data" }
}

resource "aws_efs_mount_target" "data" {
  for_each        = aws_subnet.private
  file_system_id  = aws_efs_file_system.data.id
  subnet_id       = each.value.id
  security_groups = [aws_security_group.main["efs"].id]
}

resource "aws_efs_access_point" "data" {
  for_each       = local.access_points
  file_system_id = aws_efs_file_system.data.id
  posix_user {
    uid = each.value.id
    gid = each.value.id
  }
  root_directory {
    path = each.value.path
    creation_info {
      owner_uid   = each.value.id
      owner_gid   = each.value.id
      permissions = "0755"
    }
  }
  tags = { Name = "${local.prefix}-${each.key}" }
}
