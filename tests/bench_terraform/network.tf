# Step vpc: the network of PLATFORM.md (dev: 2 zones, one NAT gateway).

locals {
  prefix        = "gamepulse-dev"
  zones         = ["us-east-1a", "us-east-1b"]
  public_cidrs  = { "us-east-1a" = "10.20.32.0/24", "us-east-1b" = "10.20.33.0/24" }
  private_cidrs = { "us-east-1a" = "10.20.0.0/20", "us-east-1b" = "10.20.16.0/20" }

  security_groups = {
    alb        = "Internet-facing load balancer"
    app        = "GamePulse API tasks"
    monitoring = "Prometheus, Loki, Jaeger and Grafana tasks"
    efs        = "EFS mount targets"
    endpoints  = "VPC interface endpoints"
  }
  # One rule per port and source, as manifests/gamepulse.yaml opens them (source: a CIDR or a group).
  ingress = {
    "alb-80-any"            = { group = "alb", port = 80, cidr = "0.0.0.0/0", description = "HTTP and HTTPS from anywhere" }
    "alb-443-any"           = { group = "alb", port = 443, cidr = "0.0.0.0/0", description = "HTTP and HTTPS from anywhere" }
    "app-8080-alb"          = { group = "app", port = 8080, source = "alb", description = "API traffic from the load balancer" }
    "app-8889-monitoring"   = { group = "app", port = 8889, source = "monitoring", description = "Prometheus scrapes the collector sidecar" }
    "app-8888-monitoring"   = { group = "app", port = 8888, source = "monitoring", description = "Prometheus scrapes the collector sidecar" }
    "monitoring-3000-alb"   = { group = "monitoring", port = 3000, source = "alb", description = "Grafana behind the load balancer" }
    "monitoring-3100-app"   = { group = "monitoring", port = 3100, source = "app", description = "the sidecar's logs and traces" }
    "monitoring-4317-app"   = { group = "monitoring", port = 4317, source = "app", description = "the sidecar's logs and traces" }
    "monitoring-9090-self"  = { group = "monitoring", port = 9090, source = "monitoring", description = "Grafana and Prometheus to the other monitoring services" }
    "monitoring-3100-self"  = { group = "monitoring", port = 3100, source = "monitoring", description = "Grafana and Prometheus to the other monitoring services" }
    "monitoring-16686-self" = { group = "monitoring", port = 16686, source = "monitoring", description = "Grafana and Prometheus to the other monitoring services" }
    "monitoring-8888-self"  = { group = "monitoring", port = 8888, source = "monitoring", description = "Grafana and Prometheus to the other monitoring services" }
    "efs-2049-monitoring"   = { group = "efs", port = 2049, source = "monitoring", description = "NFS from the tasks with a data volume" }
    "endpoints-443-vpc"     = { group = "endpoints", port = 443, cidr = "10.20.0.0/16", description = "HTTPS from inside the VPC" }
  }
  interface_endpoints = ["ecr.api", "ecr.dkr", "secretsmanager", "logs"]
}

resource "aws_vpc" "main" {
  cidr_block           = "10.20.0.0/16"
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = local.prefix }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = local.prefix }
}

resource "aws_subnet" "public" {
  for_each                = local.public_cidrs
  vpc_id                  = aws_vpc.main.id
  availability_zone       = each.key
  cidr_block              = each.value
  map_public_ip_on_launch = true
  tags                    = { Name = "${local.prefix}-public-${each.key}" }
}

resource "aws_subnet" "private" {
  for_each          = local.private_cidrs
  vpc_id            = aws_vpc.main.id
  availability_zone = each.key
  cidr_block        = each.value
  tags              = { Name = "${local.prefix}-private-${each.key}" }
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = { Name = "${local.prefix}-nat-${local.zones[0]}" }
}

resource "aws_nat_gateway" "main" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public[local.zones[0]].id
  tags          = { Name = "${local.prefix}-nat-${local.zones[0]}" }
  depends_on    = [aws_internet_gateway.main]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = "${local.prefix}-public" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = "${local.prefix}-private" }
}

resource "aws_route" "public_default" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.main.id
}

resource "aws_route" "private_default" {
  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.main.id
}

resource "aws_route_table_association" "public" {
  for_each       = aws_subnet.public
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table_association" "private" {
  for_each       = aws_subnet.private
  subnet_id      = each.value.id
  route_table_id = aws_route_table.private.id
}

resource "aws_security_group" "main" {
  for_each    = local.security_groups
  name        = "${local.prefix}-${each.key}"
  description = each.value
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${local.prefix}-${each.key}" }
}

resource "aws_vpc_security_group_ingress_rule" "main" {
  for_each                     = local.ingress
  security_group_id            = aws_security_group.main[each.value.group].id
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  cidr_ipv4                    = lookup(each.value, "cidr", null)
  referenced_security_group_id = contains(keys(each.value), "source") ? aws_security_group.main[each.value.source].id : null
  description                  = each.value.description
  # moto drops the description of a rule that names a group (AuthorizeSecurityGroupIngress keeps
  # it on AWS): without this, every apply would write the descriptions again.
  lifecycle {
    ignore_changes = [description]
  }
}

# The provider removes the default allow-all egress rule of a new group; the orchestrator keeps
# it (egress stays open), so it is declared here.
resource "aws_vpc_security_group_egress_rule" "all" {
  for_each          = local.security_groups
  security_group_id = aws_security_group.main[each.key].id
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.main.id
  service_name      = "com.amazonaws.us-east-1.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  tags              = { Name = "${local.prefix}-s3" }
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = toset(local.interface_endpoints)
  vpc_id              = aws_vpc.main.id
  service_name        = "com.amazonaws.us-east-1.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = [for subnet in aws_subnet.private : subnet.id]
  security_group_ids  = [aws_security_group.main["endpoints"].id]
  private_dns_enabled = true
  tags                = { Name = "${local.prefix}-${replace(each.key, ".", "-")}" }
}
