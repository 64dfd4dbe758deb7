# A Docker Swarm on AWS, bootstrapped by swarmstrap: manager and worker instances in private
# subnets (of a new VPC, or of yours: vpc_id + subnet_ids), a network load balancer in front.
# Every node runs swarm-agent (installed by cloud-init), which elects the single node that runs
# `docker swarm init` and joins all the others through the rendezvous backend:
# - "secrets-manager" (default): compare-and-swaps on two Secrets Manager secrets. Two secrets,
#   two roles: every node reads and writes the shared rendezvous secret; only managers reach
#   the managers' secret (manager join token, init election). No coordinator to run.
# - "coordinator": a swarm-coordinator instance on a fixed private address, as the DigitalOcean
#   and Scaleway modules run it (its certificate pinned by the agents); no secrets, no Secrets
#   Manager permissions on the nodes.
# No SSH, no token fetching, no sleeps.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first az_count zones (sorted by name) are used, so a zone AWS adds later never changes where subnets or nodes go.
  state = "available"
}

# x86_64 or arm64 (Graviton): the default AMI follows each role's instance type, and the
# installer picks the swarm-agent build of the machine it runs on.
data "aws_ec2_instance_type" "manager" {
  instance_type = var.manager_instance_type
}

data "aws_ec2_instance_type" "worker" {
  instance_type = var.worker_instance_type
}

data "aws_ec2_instance_type" "coordinator" {
  instance_type = var.coordinator_instance_type
}

# Your network (vpc_id + subnet_ids): its address range (the swarm ports are open inside it)
# and the subnets' ranges (the coordinator's fixed address).
data "aws_vpc" "given" {
  count = local.own_network ? 0 : 1
  id    = var.vpc_id
}

data "aws_subnet" "given" {
  count = local.own_network ? 0 : length(var.subnet_ids)
  id    = var.subnet_ids[count.index]
}

data "aws_ssm_parameter" "al2023" {
  for_each = toset(var.ami_id == "" ? ["x86_64", "arm64"] : [])
  name     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${each.key}"
}

# A deleted secret's name stays blocked during its recovery window (7-30 days): a random suffix
# makes every cluster's secret names new.
resource "random_id" "secret_suffix" {
  byte_length = 4
}

locals {
  prefix  = terraform.workspace
  cluster = var.cluster_name != "" ? var.cluster_name : substr(trim(lower(replace(terraform.workspace, "/[^A-Za-z0-9-]/", "-")), "-"), 0, 32)
  azs     = slice(data.aws_availability_zones.available.names, 0, var.az_count)
  arch = {
    manager = contains(data.aws_ec2_instance_type.manager.supported_architectures, "arm64") ? "arm64" : "x86_64"
    worker  = contains(data.aws_ec2_instance_type.worker.supported_architectures, "arm64") ? "arm64" : "x86_64"
  }
  # swarmstrap releases x86_64 and aarch64 builds: nothing else (i386, the Mac instances).
  arch_supported = {
    manager = length(setintersection(data.aws_ec2_instance_type.manager.supported_architectures, ["x86_64", "arm64"])) > 0
    worker  = length(setintersection(data.aws_ec2_instance_type.worker.supported_architectures, ["x86_64", "arm64"])) > 0
  }
  ami  = { for role, arch in local.arch : role => var.ami_id != "" ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023[arch].value) }
  tags = merge({ "swarmstrap:cluster" = local.cluster }, var.tags)

  secrets_manager = var.backend == "secrets-manager"
  coordinator     = var.backend == "coordinator"

  # Backend "etcd": the operator's etcd cluster; the module creates nothing for it. The
  # cluster's keys are under etcd_prefix (default /swarmstrap/<cluster>/, the agent's default,
  # passed explicitly so output etcd_prefixes and the nodes agree), and the manager join token
  # beside it under "<prefix without its trailing />.managers/", which only the manager role
  # may read.
  etcd                 = var.backend == "etcd"
  etcd_prefix          = var.etcd_prefix != "" ? var.etcd_prefix : "/swarmstrap/${local.cluster}/"
  etcd_managers_prefix = "${trimsuffix(local.etcd_prefix, "/")}.managers/"
  # Each node kind's etcd login: the workers may have their own user (the worker role).
  etcd_worker_own_login = var.etcd_worker_user != ""
  etcd_login = {
    manager = { user = local.etcd ? var.etcd_user : "", password = local.etcd ? var.etcd_password : "" }
    worker = {
      user     = local.etcd ? (local.etcd_worker_own_login ? var.etcd_worker_user : var.etcd_user) : ""
      password = local.etcd ? (local.etcd_worker_own_login ? var.etcd_worker_password : var.etcd_password) : ""
    }
  }
  # What the etcd inputs need together (a variable's validation sees only itself): the
  # managers' precondition refuses the plan with every message here. nonsensitive(): whether
  # a secret input is empty is not a secret, and the messages must be shown.
  etcd_input_errors = compact([
    local.etcd && length(var.etcd_endpoints) == 0 ? "backend \"etcd\" needs etcd_endpoints: the https:// client URLs of your etcd members, e.g. [\"https://10.0.0.5:2379\"]." : "",
    local.etcd && var.etcd_ca_pem == "" ? "backend \"etcd\" needs etcd_ca_pem: the endpoints are https, and the agents check the members' certificates against that CA (e.g. etcd_ca_pem = file(\"etcd-ca.pem\"))." : "",
    nonsensitive((var.etcd_client_cert_pem == "") != (var.etcd_client_key_pem == "")) ? "etcd_client_cert_pem and etcd_client_key_pem go together: set both (the client certificate and its key) or neither." : "",
    nonsensitive((var.etcd_user == "") != (var.etcd_password == "")) ? "etcd_user and etcd_password go together: set both or neither." : "",
    nonsensitive((var.etcd_worker_user == "") != (var.etcd_worker_password == "")) ? "etcd_worker_user and etcd_worker_password go together: set both, or neither (the workers then use etcd_user)." : "",
    var.etcd_worker_user != "" && var.etcd_user == "" ? "etcd_worker_user needs etcd_user: with etcd auth on, the managers need a user too (one with the manager role)." : "",
    !local.etcd && (length(var.etcd_endpoints) > 0 || var.etcd_prefix != "" || var.etcd_ca_pem != "" || var.etcd_client_cert_pem != "" || var.etcd_user != "" || var.etcd_worker_user != "" || nonsensitive(var.etcd_client_key_pem != "" || var.etcd_password != "" || var.etcd_worker_password != "")) ? "the etcd_* inputs are for backend \"etcd\", and backend is \"${var.backend}\": set backend = \"etcd\" or remove them." : "",
  ])

  # The network: the module's own VPC (public subnets for the NAT gateway and the load
  # balancer, private ones for the nodes), or your VPC and subnets.
  own_network      = var.vpc_id == ""
  vpc_id           = local.own_network ? aws_vpc.this[0].id : var.vpc_id
  vpc_cidr         = local.own_network ? var.vpc_cidr : data.aws_vpc.given[0].cidr_block
  node_subnet_ids  = local.own_network ? aws_subnet.private[*].id : var.subnet_ids
  node_subnet_cidr = local.own_network ? cidrsubnet(var.vpc_cidr, 4, 8) : data.aws_subnet.given[0].cidr_block
  # Your network: the load balancer goes into lb_subnet_ids (public subnets: internet-facing),
  # or, without them, into subnet_ids as an internal load balancer.
  lb_subnet_ids = local.own_network ? aws_subnet.public[*].id : (length(var.lb_subnet_ids) > 0 ? var.lb_subnet_ids : var.subnet_ids)
  lb_internal   = !local.own_network && length(var.lb_subnet_ids) == 0

  # Coordinator backend: a fixed private address in the first node subnet, known before the
  # instance exists, so the certificate can name it and the nodes can be told where it is.
  coordinator_port         = 8443
  coordinator_ip           = var.coordinator_private_ip != "" ? var.coordinator_private_ip : cidrhost(local.node_subnet_cidr, 10)
  coordinator_url          = "https://${local.coordinator_ip}:${local.coordinator_port}"
  coordinator_binary_url   = var.coordinator_binary_url == null ? "" : replace(var.coordinator_binary_url, "{version}", var.agent_version)
  coordinator_cert_der_b64 = local.coordinator ? join("", [for line in split("\n", tls_self_signed_cert.coordinator[0].cert_pem) : trimspace(line) if length(regexall("^-----|^\\s*$", line)) == 0]) : ""
  coordinator_fingerprint  = local.coordinator ? "sha256:${local_file.coordinator_cert_der[0].content_sha256}" : ""

  # Node labels from instance tags (the agent reads them through the instance metadata, so
  # the instances set instance_metadata_tags): swarm.label.KEY = VALUE.
  label_tags = {
    manager = { for k, v in var.manager_labels : "swarm.label.${k}" => v }
    worker  = { for k, v in var.worker_labels : "swarm.label.${k}" => v }
  }

  region = data.aws_region.current.name
  # S, the shared rendezvous secret (registrations, lease, worker join data): every node.
  secret_name = "${var.secret_name_prefix}${local.cluster}-${random_id.secret_suffix.hex}"
  # S/managers (manager join token, init election records): managers only. The agents derive
  # this name from S.
  manager_secret_name = "${local.secret_name}/managers"

  # Each secret as IAM resources: Secrets Manager appends "-" and 6 random characters to a
  # secret's ARN, and a call made before the secret exists is authorized against the bare name
  # ARN. "??????" (exactly six characters), not "*": in IAM, "*" and "?" also match "/", and a
  # grant must never reach beyond its own secret (tests/iac/test_terraform.py checks that the
  # workers' resources match no ARN of S/managers).
  secret_arn_prefix   = "arn:${data.aws_partition.current.partition}:secretsmanager:${local.region}:${data.aws_caller_identity.current.account_id}:secret:"
  secret_arns         = ["${local.secret_arn_prefix}${local.secret_name}-??????", "${local.secret_arn_prefix}${local.secret_name}"]
  manager_secret_arns = ["${local.secret_arn_prefix}${local.manager_secret_name}-??????", "${local.secret_arn_prefix}${local.manager_secret_name}"]

  # What the agents call (CreateSecret with tags needs TagResource: an agent re-creates a secret
  # deleted for good, tagged swarmstrap:cluster and swarmstrap:secret).
  secret_actions = [
    "secretsmanager:CreateSecret",
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:ListSecretVersionIds",
    "secretsmanager:PutSecretValue",
    "secretsmanager:TagResource",
    "secretsmanager:UpdateSecretVersionStage",
  ]

  # An explicit binary (agent_url + agent_sha256) only for a mirror without signature files;
  # else the installer fetches and checks the signed release agent_version.
  agent_url      = var.agent_url == null ? "" : replace(var.agent_url, "{version}", var.agent_version)
  cloud_init_dir = "${path.module}/../../../cloud-init"

  # Everything a node's user-data needs. Nothing depends on worker_count, so scaling the
  # workers never changes an existing instance.
  # cloud_provider is the config's [cloud] provider: the agent reads this cloud's tags (node
  # labels from manager_labels/worker_labels) whatever advertise_addr is.
  node_vars = {
    cluster                 = local.cluster
    backend                 = var.backend
    target_managers         = var.manager_count
    advertise_addr          = var.advertise_addr
    coordinator_url         = local.coordinator ? local.coordinator_url : ""
    coordinator_fingerprint = local.coordinator_fingerprint
    join_secret             = local.coordinator ? random_password.cluster_secret[0].result : ""
    sm_secret_name          = local.secrets_manager ? local.secret_name : ""
    sm_region               = local.secrets_manager ? local.region : ""
    sm_kms_key_id           = local.secrets_manager ? var.kms_key_id : ""
    sm_endpoint_url         = ""
    etcd_endpoints          = local.etcd ? var.etcd_endpoints : []
    etcd_prefix             = local.etcd ? local.etcd_prefix : ""
    etcd_ca_pem             = local.etcd ? var.etcd_ca_pem : ""
    etcd_cert_pem           = local.etcd ? var.etcd_client_cert_pem : ""
    etcd_key_pem            = local.etcd ? var.etcd_client_key_pem : ""
    # etcd_user and etcd_password: per node kind (local.etcd_login), merged in below.
    lb_enabled            = var.lb_config_enabled
    lb_path               = "/loadbalancer/default.conf"
    lb_reload_service     = var.lb_reload_service
    agent_version         = var.agent_version
    release_base_url      = var.release_base_url
    release_public_key    = var.release_public_key
    agent_url             = local.agent_url
    agent_sha256          = var.agent_sha256 == null ? "" : var.agent_sha256
    docker_version        = var.docker_version
    docker_log_max_size   = var.docker_log_max_size
    docker_log_max_file   = tostring(var.docker_log_max_file)
    cloud_provider        = "aws"
    agent_unit            = file("${local.cloud_init_dir}/swarm-agent.service")
    metadata_block_script = file("${local.cloud_init_dir}/swarmstrap-metadata-block.sh")
    metadata_block_unit   = file("${local.cloud_init_dir}/swarmstrap-metadata-block.service")
    install_script        = file("${local.cloud_init_dir}/swarmstrap-install.sh")
  }

  # Each role's user-data, sent gzipped (AWS takes 16384 bytes of user-data; cloud-init reads
  # gzip as it is): swarmstrap's cloud-config, or with cloud_config_extra a MIME multipart
  # whose second part cloud-init merges into the first (lists appended;
  # cloud-init/multipart.tftpl).
  node_cloud_config = { for role in ["manager", "worker"] : role => templatefile("${local.cloud_init_dir}/node.yaml.tftpl", merge(local.node_vars, { role = role, etcd_user = local.etcd_login[role].user, etcd_password = local.etcd_login[role].password })) }
  node_user_data    = { for role, cc in local.node_cloud_config : role => var.cloud_config_extra == "" ? cc : templatefile("${local.cloud_init_dir}/multipart.tftpl", { swarmstrap = cc, extra = var.cloud_config_extra }) }
  # base64 of at most 16383 bytes is at most 21844 characters.
  user_data_b64_limit = 21844

  # Waits on the first manager until the swarm has every node Ready (swarm-agent status --wait),
  # through SSM Run Command (AWS-RunShellScript): send the command, wait while it runs, print
  # its output, and exit 0 only if it succeeded.
  expected_nodes = var.manager_count + var.worker_count
  ssm_invocation = "--region ${local.region} --command-id \"$id\" --instance-id ${aws_instance.manager[0].id}"

  swarm_ports = {
    "swarm-manage-tcp"  = { protocol = "tcp", port = 2377, description = "Swarm cluster management (raft, joins)" }
    "swarm-gossip-tcp"  = { protocol = "tcp", port = 7946, description = "Swarm node gossip (tcp)" }
    "swarm-gossip-udp"  = { protocol = "udp", port = 7946, description = "Swarm node gossip (udp)" }
    "swarm-overlay-udp" = { protocol = "udp", port = 4789, description = "Swarm overlay network data (VXLAN)" }
    # The agents' relay: managers serve the cluster's documents to the nodes (mutual TLS with
    # the swarm's node certificates), so they do not poll Secrets Manager.
    "swarmstrap-relay-tcp" = { protocol = "tcp", port = 2378, description = "swarmstrap relay between the agents (mutual TLS)" }
  }

  # One load-balancer attachment per (port, node); adding a worker only adds its own.
  lb_nodes = merge(
    { for i, inst in aws_instance.manager : "manager-${i + 1}" => inst.id },
    { for i, inst in aws_instance.worker : "worker-${i + 1}" => inst.id },
  )
  lb_attachments = {
    for pair in setproduct([for p in var.lb_ports : tostring(p)], keys(local.lb_nodes)) :
    "${pair[0]}/${pair[1]}" => { port = pair[0], instance_id = local.lb_nodes[pair[1]] }
  }
}

# ---------------------------------------------------------------------------------------------
# Network: public subnets for the NAT gateway and the load balancer, private ones for the nodes.

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:VPC flow logs need a log destination and cost money; enable them in your own account baseline, not per swarm.
  count = local.own_network ? 1 : 0

  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = "${local.prefix}-swarm" })
}

# No rules: nothing may use the default security group.
resource "aws_default_security_group" "this" {
  count  = local.own_network ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${local.prefix}-swarm-default-unused" })
}

resource "aws_internet_gateway" "this" {
  count  = local.own_network ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${local.prefix}-swarm" })
}

resource "aws_subnet" "public" {
  count = local.own_network ? var.az_count : 0

  vpc_id                  = aws_vpc.this[0].id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${local.prefix}-swarm-public-${local.azs[count.index]}" })
}

resource "aws_subnet" "private" {
  count = local.own_network ? var.az_count : 0

  vpc_id            = aws_vpc.this[0].id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 8 + count.index)
  tags              = merge(local.tags, { Name = "${local.prefix}-swarm-private-${local.azs[count.index]}" })
}

resource "aws_eip" "nat" {
  count  = local.own_network ? 1 : 0
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${local.prefix}-swarm-nat" })
}

# One NAT gateway: the nodes' way out (packages, the agent download, image pulls, the AWS APIs).
resource "aws_nat_gateway" "this" {
  count         = local.own_network ? 1 : 0
  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id
  tags          = merge(local.tags, { Name = "${local.prefix}-swarm" })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  count  = local.own_network ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${local.prefix}-swarm-public" })

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }
}

resource "aws_route_table" "private" {
  count  = local.own_network ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${local.prefix}-swarm-private" })

  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this[0].id
  }
}

resource "aws_route_table_association" "public" {
  count          = local.own_network ? var.az_count : 0
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_route_table_association" "private" {
  count          = local.own_network ? var.az_count : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[0].id
}

# ---------------------------------------------------------------------------------------------
# Security groups

resource "aws_security_group" "nodes" {
  name        = "${local.prefix}-swarm-nodes"
  description = "swarmstrap swarm nodes: swarm ports inside the VPC, service ports from the load balancer"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.prefix}-swarm-nodes" })

  lifecycle {
    precondition {
      condition     = (var.vpc_id == "") == (length(var.subnet_ids) == 0) && (var.vpc_id != "" || length(var.lb_subnet_ids) == 0)
      error_message = "Set vpc_id with subnet_ids (your network: the nodes' private subnets, with a route out through a NAT gateway; lb_subnet_ids optional), or none of vpc_id, subnet_ids and lb_subnet_ids (the module's own VPC)."
    }
    precondition {
      condition     = alltrue([for s in data.aws_subnet.given : s.vpc_id == var.vpc_id])
      error_message = "Every subnet in subnet_ids must belong to vpc_id."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "swarm" {
  for_each = local.swarm_ports

  security_group_id = aws_security_group.nodes.id
  description       = each.value.description
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = local.vpc_cidr
}

resource "aws_vpc_security_group_ingress_rule" "lb_to_nodes" {
  for_each = toset([for p in var.lb_ports : tostring(p)])

  security_group_id            = aws_security_group.nodes.id
  description                  = "Published service port ${each.key} from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.key)
  to_port                      = tonumber(each.key)
  referenced_security_group_id = aws_security_group.lb.id
}

resource "aws_vpc_security_group_egress_rule" "nodes_all" {
  #checkov:skip=CKV_AWS_382:Nodes must reach distribution mirrors, the agent download, image registries and the AWS APIs (through the NAT gateway); these have no fixed addresses.
  security_group_id = aws_security_group.nodes.id
  description       = "Outbound: packages, agent download, image pulls, AWS APIs"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "lb" {
  name        = "${local.prefix}-swarm-lb"
  description = "swarmstrap swarm load balancer: service ports from lb_allowed_cidrs"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.prefix}-swarm-lb" })
}

resource "aws_vpc_security_group_ingress_rule" "lb_public" {
  #checkov:skip=CKV_AWS_260:The load balancer publishes the swarm's web services; lb_allowed_cidrs (default the internet) chooses who may reach them.
  for_each = { for pair in setproduct([for p in var.lb_ports : tostring(p)], var.lb_allowed_cidrs) : "${pair[0]}/${pair[1]}" => { port = pair[0], cidr = pair[1] } }

  security_group_id = aws_security_group.lb.id
  description       = "Service port ${each.value.port} from ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value.port)
  to_port           = tonumber(each.value.port)
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "lb_to_nodes" {
  for_each = toset([for p in var.lb_ports : tostring(p)])

  security_group_id            = aws_security_group.lb.id
  description                  = "Service port ${each.key} to the nodes"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.key)
  to_port                      = tonumber(each.key)
  referenced_security_group_id = aws_security_group.nodes.id
}

# ---------------------------------------------------------------------------------------------
# Secrets (backend "secrets-manager"): the module creates both (without a value: the agents
# write them). `terraform destroy` schedules them for deletion (secret_recovery_window_days; 0
# deletes them at once). An agent re-creates a secret only if it was deleted for good while the
# cluster ran; such a secret is not in the state: output secrets_cleanup_command deletes it.

resource "aws_secretsmanager_secret" "rendezvous" {
  #checkov:skip=CKV2_AWS_57:Rotation does not apply: the values are swarm join tokens and election state the swarm rotates itself; a rotation Lambda would overwrite the rendezvous document.
  count = local.secrets_manager ? 1 : 0

  name                    = local.secret_name
  description             = "swarmstrap rendezvous of cluster ${local.cluster}: registrations, lease, the join data every node may see"
  kms_key_id              = var.kms_key_id != "" ? var.kms_key_id : null
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = merge(local.tags, { "swarmstrap:cluster" = local.cluster, "swarmstrap:secret" = "rendezvous" })
}

resource "aws_secretsmanager_secret" "managers" {
  #checkov:skip=CKV2_AWS_57:Rotation does not apply: the values are swarm join tokens and election state the swarm rotates itself; a rotation Lambda would overwrite the rendezvous document.
  count = local.secrets_manager ? 1 : 0

  name                    = local.manager_secret_name
  description             = "swarmstrap managers-only secret of cluster ${local.cluster}: manager join token, init election (managers only)"
  kms_key_id              = var.kms_key_id != "" ? var.kms_key_id : null
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = merge(local.tags, { "swarmstrap:cluster" = local.cluster, "swarmstrap:secret" = "managers" })
}

# ---------------------------------------------------------------------------------------------
# Coordinator (backend "coordinator"): as in the DigitalOcean and Scaleway modules, one
# swarm-coordinator instance whose TLS identity and cluster secret Terraform makes, so the pin
# and the URL are in every node's user-data before any node boots.

# The cluster's join secret: the coordinator registers the cluster with it and every agent
# authenticates with it. It sits in the Terraform state and in the instances' user-data: keep
# the state private.
resource "random_password" "cluster_secret" {
  count   = local.coordinator ? 1 : 0
  length  = 48
  special = false
}

resource "tls_private_key" "coordinator" {
  count       = local.coordinator ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "coordinator" {
  count           = local.coordinator ? 1 : 0
  private_key_pem = tls_private_key.coordinator[0].private_key_pem

  subject {
    common_name  = "swarm-coordinator"
    organization = "swarmstrap"
  }

  ip_addresses          = [local.coordinator_ip]
  dns_names             = ["swarm-coordinator.${local.cluster}.internal"]
  validity_period_hours = 87600
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth"]
}

# The DER of the certificate (public, not a secret), written only so its sha256 can be taken
# (Terraform's sha256() cannot hash bytes that are not UTF-8; see the DigitalOcean module).
resource "local_file" "coordinator_cert_der" {
  count                = local.coordinator ? 1 : 0
  content_base64       = local.coordinator_cert_der_b64
  filename             = "${path.root}/.terraform/swarmstrap/${local.prefix}-coordinator.der"
  file_permission      = "0644"
  directory_permission = "0755"
}

resource "aws_security_group" "coordinator" {
  count       = local.coordinator ? 1 : 0
  name        = "${local.prefix}-swarm-coordinator"
  description = "swarmstrap coordinator: its HTTPS port from the swarm nodes only"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.prefix}-swarm-coordinator" })
}

resource "aws_vpc_security_group_ingress_rule" "coordinator_from_nodes" {
  count                        = local.coordinator ? 1 : 0
  security_group_id            = aws_security_group.coordinator[0].id
  description                  = "swarm-coordinator (HTTPS, pinned certificate) from the swarm nodes"
  ip_protocol                  = "tcp"
  from_port                    = local.coordinator_port
  to_port                      = local.coordinator_port
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_vpc_security_group_egress_rule" "coordinator_all" {
  #checkov:skip=CKV_AWS_382:The coordinator downloads its release and packages (through the NAT gateway); these have no fixed addresses.
  count             = local.coordinator ? 1 : 0
  security_group_id = aws_security_group.coordinator[0].id
  description       = "Outbound: packages, the release download, the AWS APIs (SSM)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# The coordinator's role: SSM Session Manager only (no Secrets Manager, no other AWS API).
resource "aws_iam_role" "coordinator" {
  count              = local.coordinator ? 1 : 0
  name_prefix        = "${substr(local.prefix, 0, 20)}-swarm-coord-"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = merge(local.tags, { "swarmstrap:role" = "coordinator" })
}

resource "aws_iam_role_policy_attachment" "coordinator" {
  count      = local.coordinator ? 1 : 0
  role       = aws_iam_role.coordinator[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "coordinator" {
  count       = local.coordinator ? 1 : 0
  name_prefix = "${substr(local.prefix, 0, 20)}-swarm-coord-"
  role        = aws_iam_role.coordinator[0].name
  tags        = local.tags
}

resource "aws_instance" "coordinator" {
  count = local.coordinator ? 1 : 0

  ami                    = local.ami["manager"]
  instance_type          = var.coordinator_instance_type
  subnet_id              = local.node_subnet_ids[0]
  private_ip             = local.coordinator_ip
  vpc_security_group_ids = [aws_security_group.coordinator[0].id]
  iam_instance_profile   = aws_iam_instance_profile.coordinator[0].name
  key_name               = var.ssh_key_name != "" ? var.ssh_key_name : null
  monitoring             = true
  ebs_optimized          = true
  # gzip: the embedded installer makes the cloud-config larger than AWS's 16 KB user-data limit.
  user_data_base64 = base64gzip(templatefile("${local.cloud_init_dir}/coordinator.yaml.tftpl", {
    cluster                   = local.cluster
    target_managers           = var.manager_count
    cluster_secret            = random_password.cluster_secret[0].result
    tls_cert_pem              = tls_self_signed_cert.coordinator[0].cert_pem
    tls_key_pem               = tls_private_key.coordinator[0].private_key_pem
    agent_version             = var.agent_version
    release_base_url          = var.release_base_url
    release_public_key        = var.release_public_key
    coordinator_binary_url    = local.coordinator_binary_url
    coordinator_binary_sha256 = var.coordinator_binary_sha256 == null ? "" : var.coordinator_binary_sha256
    adopt_running_swarm       = var.coordinator_adopt_running_swarm
    coordinator_unit          = file("${local.cloud_init_dir}/swarm-coordinator.service")
    install_script            = file("${local.cloud_init_dir}/swarmstrap-install.sh")
  }))

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 8
    encrypted   = true
  }

  tags = merge(local.tags, { Name = "${local.prefix}-coordinator-1", "swarmstrap:role" = "coordinator" })

  depends_on = [aws_iam_role_policy_attachment.coordinator, aws_route_table_association.private]

  lifecycle {
    precondition {
      condition     = local.arch["manager"] == (contains(data.aws_ec2_instance_type.coordinator.supported_architectures, "arm64") ? "arm64" : "x86_64")
      error_message = "The coordinator runs the managers' AMI: give coordinator_instance_type the managers' architecture (${local.arch["manager"]})."
    }
    # A new AMI or template edit must not replace the rendezvous of a running cluster.
    # So setting coordinator_adopt_running_swarm changes nothing on a running coordinator: it
    # takes effect only when the coordinator is replaced (terraform apply -replace=...).
    ignore_changes = [ami, user_data, user_data_base64]
  }
}

# ---------------------------------------------------------------------------------------------
# IAM: one role per node kind, each with SSM Session Manager access and its secrets (nothing
# else). Workers: S only, and an explicit deny on S/managers. Managers: S and S/managers.

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "worker_secrets" {
  statement {
    sid       = "SwarmRendezvousSecret"
    effect    = "Allow"
    actions   = local.secret_actions
    resources = local.secret_arns
  }

  # Defence in depth: whatever else the role is ever given, never the managers' secret.
  statement {
    sid       = "NoManagersSecret"
    effect    = "Deny"
    actions   = ["secretsmanager:*"]
    resources = local.manager_secret_arns
  }

  dynamic "statement" {
    for_each = var.kms_key_id != "" ? [var.kms_key_id] : []
    content {
      sid       = "SwarmSecretsKey"
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

data "aws_iam_policy_document" "manager_secrets" {
  statement {
    sid       = "SwarmRendezvousSecret"
    effect    = "Allow"
    actions   = local.secret_actions
    resources = local.secret_arns
  }

  statement {
    sid       = "SwarmManagersSecret"
    effect    = "Allow"
    actions   = local.secret_actions
    resources = local.manager_secret_arns
  }

  dynamic "statement" {
    for_each = var.kms_key_id != "" ? [var.kms_key_id] : []
    content {
      sid       = "SwarmSecretsKey"
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "manager" {
  name_prefix        = "${substr(local.prefix, 0, 20)}-swarm-manager-"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = merge(local.tags, { "swarmstrap:role" = "manager" })
}

resource "aws_iam_role" "worker" {
  name_prefix        = "${substr(local.prefix, 0, 20)}-swarm-worker-"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = merge(local.tags, { "swarmstrap:role" = "worker" })
}

resource "aws_iam_role_policy_attachment" "manager" {
  role       = aws_iam_role.manager.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy_attachment" "worker" {
  role       = aws_iam_role.worker.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy" "manager" {
  count  = local.secrets_manager ? 1 : 0
  name   = "swarmstrap-secrets"
  role   = aws_iam_role.manager.id
  policy = data.aws_iam_policy_document.manager_secrets.json
}

resource "aws_iam_role_policy" "worker" {
  count  = local.secrets_manager ? 1 : 0
  name   = "swarmstrap-secrets"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker_secrets.json
}

resource "aws_iam_instance_profile" "manager" {
  name_prefix = "${substr(local.prefix, 0, 20)}-swarm-manager-"
  role        = aws_iam_role.manager.name
  tags        = local.tags
}

resource "aws_iam_instance_profile" "worker" {
  name_prefix = "${substr(local.prefix, 0, 20)}-swarm-worker-"
  role        = aws_iam_role.worker.name
  tags        = local.tags
}

# ---------------------------------------------------------------------------------------------
# Nodes

resource "aws_instance" "manager" {
  count = var.manager_count

  ami                    = local.ami["manager"]
  instance_type          = var.manager_instance_type
  subnet_id              = local.node_subnet_ids[count.index % length(local.node_subnet_ids)]
  vpc_security_group_ids = [aws_security_group.nodes.id]
  iam_instance_profile   = aws_iam_instance_profile.manager.name
  key_name               = var.ssh_key_name != "" ? var.ssh_key_name : null
  monitoring             = true
  ebs_optimized          = true
  # gzip: the embedded installer makes the cloud-config larger than AWS's 16 KB user-data limit;
  # cloud-init reads gzipped user-data as it is (see local.node_user_data).
  user_data_base64 = base64gzip(local.node_user_data["manager"])

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    # The agent reads this instance's swarm.label.* tags (node labels) from the metadata.
    instance_metadata_tags = "enabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size
    encrypted   = true
  }

  tags = merge(local.tags, local.label_tags["manager"], { Name = "${local.prefix}-manager-${count.index + 1}", "swarmstrap:role" = "manager" })

  # The agents need their secrets and permissions before they first call Secrets Manager.
  depends_on = [aws_secretsmanager_secret.rendezvous, aws_secretsmanager_secret.managers, aws_iam_role_policy.manager, aws_iam_role_policy_attachment.manager, aws_route_table_association.private, aws_instance.coordinator]

  lifecycle {
    precondition {
      condition     = (var.agent_url == null) == (var.agent_sha256 == null) && (var.coordinator_binary_url == null) == (var.coordinator_binary_sha256 == null)
      error_message = "Set agent_url with agent_sha256 and coordinator_binary_url with coordinator_binary_sha256 (explicit binaries for a mirror without signature files), or neither (the signed release agent_version)."
    }
    precondition {
      condition     = length(local.etcd_input_errors) == 0
      error_message = join(" ", local.etcd_input_errors)
    }
    precondition {
      condition     = local.arch_supported["manager"]
      error_message = "The manager_instance_type ${var.manager_instance_type} supports only ${join(", ", data.aws_ec2_instance_type.manager.supported_architectures)}: swarmstrap releases x86_64 and arm64 (aarch64) builds; pick an x86_64 type such as t3.small or an arm64 (Graviton) type such as t4g.small."
    }
    precondition {
      condition     = length(base64gzip(local.node_user_data["manager"])) <= local.user_data_b64_limit
      error_message = "The managers' user-data is more than 16383 bytes gzipped (AWS's limit is 16384): shorten cloud_config_extra, or with backend \"etcd\" give smaller PEMs (etcd_ca_pem only the CA that signed the members, EC or RSA-2048 keys for etcd_client_cert_pem/etcd_client_key_pem)."
    }
    # Replacing (or stop/starting) every manager at once would lose the raft quorum: roll them
    # one at a time with `terraform apply -replace=...` when the AMI or the template changes.
    ignore_changes = [ami, user_data, user_data_base64]
  }
}

resource "aws_instance" "worker" {
  count = var.worker_count

  ami                    = local.ami["worker"]
  instance_type          = var.worker_instance_type
  subnet_id              = local.node_subnet_ids[count.index % length(local.node_subnet_ids)]
  vpc_security_group_ids = [aws_security_group.nodes.id]
  iam_instance_profile   = aws_iam_instance_profile.worker.name
  key_name               = var.ssh_key_name != "" ? var.ssh_key_name : null
  monitoring             = true
  ebs_optimized          = true
  # gzip: the embedded installer makes the cloud-config larger than AWS's 16 KB user-data limit;
  # cloud-init reads gzipped user-data as it is (see local.node_user_data).
  user_data_base64 = base64gzip(local.node_user_data["worker"])

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    # The agent reads this instance's swarm.label.* tags (node labels) from the metadata.
    instance_metadata_tags = "enabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size
    encrypted   = true
  }

  tags = merge(local.tags, local.label_tags["worker"], { Name = "${local.prefix}-worker-${count.index + 1}", "swarmstrap:role" = "worker" })

  depends_on = [aws_secretsmanager_secret.rendezvous, aws_secretsmanager_secret.managers, aws_iam_role_policy.worker, aws_iam_role_policy_attachment.worker, aws_route_table_association.private, aws_instance.coordinator]

  lifecycle {
    precondition {
      condition     = local.arch_supported["worker"]
      error_message = "The worker_instance_type ${var.worker_instance_type} supports only ${join(", ", data.aws_ec2_instance_type.worker.supported_architectures)}: swarmstrap releases x86_64 and arm64 (aarch64) builds; pick an x86_64 type such as t3.small or an arm64 (Graviton) type such as t4g.small."
    }
    precondition {
      condition     = (var.ami_id == "" && var.agent_url == null) || local.arch["manager"] == local.arch["worker"]
      error_message = "The managers are ${local.arch["manager"]} and the workers ${local.arch["worker"]}: ami_id and agent_url are one architecture each, so use them only with instance types of one architecture (or leave them unset: the AMI and the release binary then follow each instance type)."
    }
    precondition {
      condition     = length(base64gzip(local.node_user_data["worker"])) <= local.user_data_b64_limit
      error_message = "The workers' user-data is more than 16383 bytes gzipped (AWS's limit is 16384): shorten cloud_config_extra, or with backend \"etcd\" give smaller PEMs (etcd_ca_pem only the CA that signed the members, EC or RSA-2048 keys for etcd_client_cert_pem/etcd_client_key_pem)."
    }
    ignore_changes = [ami, user_data, user_data_base64]
  }
}

# ---------------------------------------------------------------------------------------------
# Network load balancer in front of the routing mesh of every node.

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:Access logs need an S3 bucket with its own policy and lifecycle; enable them in your account baseline if you want them.
  #checkov:skip=CKV_AWS_150:Deletion protection would make `terraform destroy` of a swarm fail; the load balancer holds no data.
  count = length(var.lb_ports) > 0 ? 1 : 0

  name_prefix                      = "swarm-"
  load_balancer_type               = "network"
  internal                         = local.lb_internal
  subnets                          = local.lb_subnet_ids
  security_groups                  = [aws_security_group.lb.id]
  enable_cross_zone_load_balancing = true
  tags                             = local.tags

  depends_on = [aws_internet_gateway.this]
}

resource "aws_lb_target_group" "this" {
  for_each = toset([for p in var.lb_ports : tostring(p)])

  name_prefix = "swarm-"
  port        = tonumber(each.key)
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = local.vpc_id
  tags        = local.tags

  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "this" {
  #checkov:skip=CKV_AWS_2:A TCP pass-through listener: TLS, if any, is terminated by the swarm's own services.
  #checkov:skip=CKV_AWS_103:A TCP pass-through listener has no TLS policy.
  for_each = aws_lb_target_group.this

  load_balancer_arn = aws_lb.this[0].arn
  port              = tonumber(each.key)
  protocol          = "TCP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = each.value.arn
  }
}

resource "aws_lb_target_group_attachment" "this" {
  for_each = local.lb_attachments

  target_group_arn = aws_lb_target_group.this[each.value.port].arn
  target_id        = each.value.instance_id
  port             = tonumber(each.value.port)
}
