# A Docker Swarm on Scaleway, bootstrapped by swarmstrap: manager and worker instances on one
# private network, and the rendezvous `backend`: a coordinator instance ("coordinator", default)
# or the operator's etcd cluster ("etcd": nothing created for it). Every node runs swarm-agent
# (installed by cloud-init), which elects the single node that runs `docker swarm init` through
# the rendezvous and joins all the others. No SSH, no provisioners, no token fetching.

locals {
  prefix  = terraform.workspace
  cluster = var.cluster_name != "" ? var.cluster_name : substr(trim(lower(replace(terraform.workspace, "/[^A-Za-z0-9-]/", "-")), "-"), 0, 32)
  region  = join("-", slice(split("-", var.zone), 0, 2))
  tags    = concat(["swarmstrap", "swarm-${local.cluster}"], var.tags)

  # Explicit binaries (URL + sha256) only for a mirror without signature files; else the
  # installer fetches and checks the signed release agent_version.
  agent_url              = var.agent_url == null ? "" : replace(var.agent_url, "{version}", var.agent_version)
  coordinator_binary_url = var.coordinator_binary_url == null ? "" : replace(var.coordinator_binary_url, "{version}", var.agent_version)
  cloud_init_dir         = "${path.module}/../../../cloud-init"
  coordinator_port       = 8443
  coordinator            = var.backend == "coordinator"

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

  # IPAM reserves the coordinator's private address before the instance exists, so the
  # certificate can name it and the nodes can be told where the coordinator is.
  coordinator_ip  = local.coordinator ? split("/", scaleway_ipam_ip.coordinator[0].address)[0] : ""
  coordinator_url = local.coordinator ? "https://${local.coordinator_ip}:${local.coordinator_port}" : ""

  # The pin the agents check: sha256 of the certificate's DER encoding. Terraform's sha256()
  # hashes the UTF-8 of a string and base64decode() refuses bytes that are not UTF-8 (a DER
  # never is), so the DER is hashed by the hashicorp/local provider (local_file below, whose
  # content_sha256 is the sha256 of the decoded bytes). This is the PEM body: base64 of the DER.
  coordinator_cert_der_b64 = local.coordinator ? join("", [for line in split("\n", tls_self_signed_cert.coordinator[0].cert_pem) : trimspace(line) if length(regexall("^-----|^\\s*$", line)) == 0]) : ""
  coordinator_fingerprint  = local.coordinator ? "sha256:${local_file.coordinator_cert_der[0].content_sha256}" : ""

  # Everything a node's user-data needs. Nothing depends on worker_count, so scaling the
  # workers never changes an existing instance.
  # cloud_provider is the config's [cloud] provider: the agent reads this cloud's tags (node
  # labels from manager_labels/worker_labels) whatever advertise_addr is.
  node_vars = {
    cluster                 = local.cluster
    backend                 = var.backend
    target_managers         = var.manager_count
    coordinator_url         = local.coordinator_url
    coordinator_fingerprint = local.coordinator_fingerprint
    join_secret             = local.coordinator ? random_password.cluster_secret[0].result : ""
    sm_secret_name          = ""
    sm_region               = ""
    sm_kms_key_id           = ""
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
    cloud_provider        = "scaleway"
    agent_unit            = file("${local.cloud_init_dir}/swarm-agent.service")
    metadata_block_script = file("${local.cloud_init_dir}/swarmstrap-metadata-block.sh")
    metadata_block_unit   = file("${local.cloud_init_dir}/swarmstrap-metadata-block.service")
    install_script        = file("${local.cloud_init_dir}/swarmstrap-install.sh")
  }

  # Each node advertises its own IPAM address: exact, and known before the node boots. (The
  # instance metadata's private_ip is not the private-network address on current instances.)
  manager_advertise = [for ip in scaleway_ipam_ip.manager : var.advertise_addr != "" ? var.advertise_addr : split("/", ip.address)[0]]
  worker_advertise  = [for ip in scaleway_ipam_ip.worker : var.advertise_addr != "" ? var.advertise_addr : split("/", ip.address)[0]]

  # Each node's user-data: swarmstrap's cloud-config, or with cloud_config_extra a MIME multipart
  # whose second part cloud-init merges into the first (lists appended; cloud-init/multipart.tftpl).
  manager_cloud_config = [for addr in local.manager_advertise : templatefile("${local.cloud_init_dir}/node.yaml.tftpl", merge(local.node_vars, { role = "manager", advertise_addr = addr, etcd_user = local.etcd_login.manager.user, etcd_password = local.etcd_login.manager.password }))]
  worker_cloud_config  = [for addr in local.worker_advertise : templatefile("${local.cloud_init_dir}/node.yaml.tftpl", merge(local.node_vars, { role = "worker", advertise_addr = addr, etcd_user = local.etcd_login.worker.user, etcd_password = local.etcd_login.worker.password }))]
  manager_user_data    = [for cc in local.manager_cloud_config : var.cloud_config_extra == "" ? cc : templatefile("${local.cloud_init_dir}/multipart.tftpl", { swarmstrap = cc, extra = var.cloud_config_extra })]
  worker_user_data     = [for cc in local.worker_cloud_config : var.cloud_config_extra == "" ? cc : templatefile("${local.cloud_init_dir}/multipart.tftpl", { swarmstrap = cc, extra = var.cloud_config_extra })]

  # Node labels from tags (the agent reads its server's tags): swarm.label.KEY=VALUE.
  label_tags = {
    manager = [for k, v in var.manager_labels : "swarm.label.${k}=${v}"]
    worker  = [for k, v in var.worker_labels : "swarm.label.${k}=${v}"]
  }

  # Waits on the first manager until the swarm has every node Ready (swarm-agent status --wait).
  expected_nodes = var.manager_count + var.worker_count

  # What runs `swarm-agent leave` before a node is deleted (see the README, "Scale-in"): the
  # provider deletes a running server with the `terminate` action, which Scaleway does not
  # document as a clean guest shutdown.
  leave_command = "swarm-agent leave --config /etc/swarm-agent/config.toml --timeout-secs 90"

  node_private_ips = concat(
    [for ip in scaleway_ipam_ip.manager : split("/", ip.address)[0]],
    [for ip in scaleway_ipam_ip.worker : split("/", ip.address)[0]],
  )
}

resource "scaleway_vpc" "this" {
  name   = "${local.prefix}-swarm"
  region = local.region
  tags   = local.tags
}

# Security groups filter only the public interfaces; the private network carries the swarm
# ports (2377/tcp, 7946/tcp+udp, 4789/udp) and the coordinator port between our instances only.
resource "scaleway_vpc_private_network" "this" {
  name   = "${local.prefix}-swarm"
  vpc_id = scaleway_vpc.this.id
  region = local.region
  tags   = local.tags

  ipv4_subnet {
    subnet = var.private_cidr
  }
}

resource "scaleway_ipam_ip" "coordinator" {
  count  = local.coordinator ? 1 : 0
  region = local.region
  tags   = local.tags

  source {
    private_network_id = scaleway_vpc_private_network.this.id
  }
}

resource "scaleway_ipam_ip" "manager" {
  count  = var.manager_count
  region = local.region
  tags   = local.tags

  source {
    private_network_id = scaleway_vpc_private_network.this.id
  }
}

resource "scaleway_ipam_ip" "worker" {
  count  = var.worker_count
  region = local.region
  tags   = local.tags

  source {
    private_network_id = scaleway_vpc_private_network.this.id
  }
}

# The cluster's join secret: the coordinator registers the cluster with it and every agent
# authenticates with it. It sits in the Terraform state and in the instances' user-data: keep
# the state private.
resource "random_password" "cluster_secret" {
  count   = local.coordinator ? 1 : 0
  length  = 48
  special = false
}

# The coordinator's TLS identity, made here so the fingerprint is known before any node boots.
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

# The DER of the certificate (public, not a secret), written only so its sha256 can be taken.
# On a machine without the file Terraform plans to write it again; instances ignore user_data
# changes, so that never replaces one.
resource "local_file" "coordinator_cert_der" {
  count                = local.coordinator ? 1 : 0
  content_base64       = local.coordinator_cert_der_b64
  filename             = "${path.root}/.terraform/swarmstrap/${local.prefix}-coordinator.der"
  file_permission      = "0644"
  directory_permission = "0755"
}

resource "scaleway_instance_security_group" "nodes" {
  name                    = "${local.prefix}-swarm-nodes"
  zone                    = var.zone
  inbound_default_policy  = "drop"
  outbound_default_policy = "accept"
  stateful                = true
  tags                    = local.tags

  dynamic "inbound_rule" {
    for_each = var.ssh_allowed_cidrs
    content {
      action   = "accept"
      protocol = "TCP"
      port     = 22
      ip_range = inbound_rule.value
    }
  }
}

resource "scaleway_instance_security_group" "coordinator" {
  count                   = local.coordinator ? 1 : 0
  name                    = "${local.prefix}-swarm-coordinator"
  zone                    = var.zone
  inbound_default_policy  = "drop"
  outbound_default_policy = "accept"
  stateful                = true
  tags                    = local.tags

  dynamic "inbound_rule" {
    for_each = var.ssh_allowed_cidrs
    content {
      action   = "accept"
      protocol = "TCP"
      port     = 22
      ip_range = inbound_rule.value
    }
  }
}

# Public IPs: outbound traffic (packages, the agent download, image pulls) and SSH.
resource "scaleway_instance_ip" "coordinator" {
  count = local.coordinator ? 1 : 0
  zone  = var.zone
  tags  = local.tags
}

resource "scaleway_instance_ip" "manager" {
  count = var.manager_count
  zone  = var.zone
  tags  = local.tags
}

resource "scaleway_instance_ip" "worker" {
  count = var.worker_count
  zone  = var.zone
  tags  = local.tags
}

resource "scaleway_instance_server" "coordinator" {
  count             = local.coordinator ? 1 : 0
  name              = "${local.prefix}-coordinator-1"
  zone              = var.zone
  type              = var.coordinator_instance_type
  image             = var.image
  ip_id             = scaleway_instance_ip.coordinator[0].id
  security_group_id = scaleway_instance_security_group.coordinator[0].id
  tags              = concat(local.tags, ["coordinator"])

  private_network {
    pn_id       = scaleway_vpc_private_network.this.id
    ipam_ip_ids = [scaleway_ipam_ip.coordinator[0].id]
  }

  user_data = {
    cloud-init = templatefile("${local.cloud_init_dir}/coordinator.yaml.tftpl", {
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
    })
  }

  lifecycle {
    # A new image or template edit must not replace the rendezvous of a running cluster.
    # So setting coordinator_adopt_running_swarm changes nothing on a running coordinator: it
    # takes effect only when the coordinator is replaced (terraform apply -replace=...).
    ignore_changes = [user_data, image]
  }
}

resource "scaleway_instance_server" "manager" {
  count = var.manager_count

  name              = "${local.prefix}-manager-${count.index + 1}"
  zone              = var.zone
  type              = var.manager_instance_type
  image             = var.image
  ip_id             = scaleway_instance_ip.manager[count.index].id
  security_group_id = scaleway_instance_security_group.nodes.id
  tags              = concat(local.tags, ["manager"], local.label_tags["manager"])

  private_network {
    pn_id       = scaleway_vpc_private_network.this.id
    ipam_ip_ids = [scaleway_ipam_ip.manager[count.index].id]
  }

  user_data = {
    cloud-init = local.manager_user_data[count.index]
  }

  # The coordinator must be up to answer the agents (they retry, but why make them wait).
  depends_on = [scaleway_instance_server.coordinator]

  lifecycle {
    precondition {
      condition     = (var.agent_url == null) == (var.agent_sha256 == null) && (var.coordinator_binary_url == null) == (var.coordinator_binary_sha256 == null)
      error_message = "Set agent_url with agent_sha256 and coordinator_binary_url with coordinator_binary_sha256 (explicit binaries for a mirror without signature files), or neither (the signed release agent_version)."
    }
    precondition {
      condition     = length(local.etcd_input_errors) == 0
      error_message = join(" ", local.etcd_input_errors)
    }
    # Replacing managers all at once would lose the raft quorum: roll them one at a time with
    # `terraform apply -replace=...` instead of letting an image or template change do it.
    ignore_changes = [user_data, image]
  }
}

resource "scaleway_instance_server" "worker" {
  count = var.worker_count

  name              = "${local.prefix}-worker-${count.index + 1}"
  zone              = var.zone
  type              = var.worker_instance_type
  image             = var.image
  ip_id             = scaleway_instance_ip.worker[count.index].id
  security_group_id = scaleway_instance_security_group.nodes.id
  tags              = concat(local.tags, ["worker"], local.label_tags["worker"])

  private_network {
    pn_id       = scaleway_vpc_private_network.this.id
    ipam_ip_ids = [scaleway_ipam_ip.worker[count.index].id]
  }

  user_data = {
    cloud-init = local.worker_user_data[count.index]
  }

  depends_on = [scaleway_instance_server.coordinator]

  lifecycle {
    ignore_changes = [user_data, image]
  }
}

# A load balancer on the private network in front of the routing mesh of every node.
resource "scaleway_lb_ip" "this" {
  count = length(var.lb_ports) > 0 ? 1 : 0
  zone  = var.zone
}

resource "scaleway_lb" "this" {
  count = length(var.lb_ports) > 0 ? 1 : 0

  name   = "${local.prefix}-swarm-lb"
  zone   = var.zone
  type   = var.lb_type
  ip_ids = [scaleway_lb_ip.this[0].id]
  tags   = local.tags

  private_network {
    private_network_id = scaleway_vpc_private_network.this.id
  }
}

resource "scaleway_lb_backend" "this" {
  for_each = length(var.lb_ports) > 0 ? toset([for p in var.lb_ports : tostring(p)]) : toset([])

  name             = "${local.prefix}-swarm-${each.key}"
  lb_id            = scaleway_lb.this[0].id
  forward_protocol = "tcp"
  forward_port     = tonumber(each.key)
  server_ips       = local.node_private_ips

  health_check_tcp {}
}

resource "scaleway_lb_frontend" "this" {
  for_each = scaleway_lb_backend.this

  name         = "${local.prefix}-swarm-${each.key}"
  lb_id        = scaleway_lb.this[0].id
  backend_id   = each.value.id
  inbound_port = tonumber(each.key)
}

# The coordinator's resources are counted (none with backend "etcd"): a state made before that
# keeps them, at index 0.
moved {
  from = scaleway_ipam_ip.coordinator
  to   = scaleway_ipam_ip.coordinator[0]
}

moved {
  from = random_password.cluster_secret
  to   = random_password.cluster_secret[0]
}

moved {
  from = tls_private_key.coordinator
  to   = tls_private_key.coordinator[0]
}

moved {
  from = tls_self_signed_cert.coordinator
  to   = tls_self_signed_cert.coordinator[0]
}

moved {
  from = local_file.coordinator_cert_der
  to   = local_file.coordinator_cert_der[0]
}

moved {
  from = scaleway_instance_security_group.coordinator
  to   = scaleway_instance_security_group.coordinator[0]
}

moved {
  from = scaleway_instance_ip.coordinator
  to   = scaleway_instance_ip.coordinator[0]
}

moved {
  from = scaleway_instance_server.coordinator
  to   = scaleway_instance_server.coordinator[0]
}
