# A Docker Swarm on DigitalOcean, bootstrapped by swarmstrap: manager and worker droplets on one
# VPC, and the rendezvous `backend`: a coordinator droplet ("coordinator", default) or the
# operator's etcd cluster ("etcd": nothing created for it). Every node runs swarm-agent
# (installed by cloud-init), which elects the single node that runs `docker swarm init` through
# the rendezvous and joins all the others. No SSH, no provisioners, no token fetching.

locals {
  prefix  = terraform.workspace
  cluster = var.cluster_name != "" ? var.cluster_name : substr(trim(lower(replace(terraform.workspace, "/[^A-Za-z0-9-]/", "-")), "-"), 0, 32)

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

  # The pin the agents check: sha256 of the certificate's DER encoding. Terraform's sha256()
  # hashes the UTF-8 of a string and base64decode() refuses bytes that are not UTF-8 (a DER
  # never is), so the DER is hashed by the hashicorp/local provider (local_file below, whose
  # content_sha256 is the sha256 of the decoded bytes). This is the PEM body: base64 of the DER.
  coordinator_cert_der_b64 = local.coordinator ? join("", [for line in split("\n", tls_self_signed_cert.coordinator[0].cert_pem) : trimspace(line) if length(regexall("^-----|^\\s*$", line)) == 0]) : ""
  coordinator_fingerprint  = local.coordinator ? "sha256:${local_file.coordinator_cert_der[0].content_sha256}" : ""
  coordinator_url          = local.coordinator ? "https://${digitalocean_droplet.coordinator[0].ipv4_address_private}:${local.coordinator_port}" : ""

  # Everything a node's user-data needs. Nothing depends on worker_count, so scaling the
  # workers never changes an existing droplet.
  # cloud_provider is the config's [cloud] provider: the agent reads this cloud's tags (node
  # labels from manager_labels/worker_labels) whatever advertise_addr is.
  node_vars = {
    cluster                 = local.cluster
    backend                 = var.backend
    target_managers         = var.manager_count
    advertise_addr          = var.advertise_addr
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
    cloud_provider        = "digitalocean"
    agent_unit            = file("${local.cloud_init_dir}/swarm-agent.service")
    metadata_block_script = file("${local.cloud_init_dir}/swarmstrap-metadata-block.sh")
    metadata_block_unit   = file("${local.cloud_init_dir}/swarmstrap-metadata-block.service")
    install_script        = file("${local.cloud_init_dir}/swarmstrap-install.sh")
  }

  # Each role's user-data: swarmstrap's cloud-config, or with cloud_config_extra a MIME multipart
  # whose second part cloud-init merges into the first (lists appended; cloud-init/multipart.tftpl).
  node_cloud_config = { for role in ["manager", "worker"] : role => templatefile("${local.cloud_init_dir}/node.yaml.tftpl", merge(local.node_vars, { role = role, etcd_user = local.etcd_login[role].user, etcd_password = local.etcd_login[role].password })) }
  node_user_data    = { for role, cc in local.node_cloud_config : role => var.cloud_config_extra == "" ? cc : templatefile("${local.cloud_init_dir}/multipart.tftpl", { swarmstrap = cc, extra = var.cloud_config_extra }) }

  # Node labels from tags (the agent reads its droplet's tags): swarm-label:KEY:VALUE.
  label_tags = {
    manager = [for k, v in var.manager_labels : "swarm-label:${k}:${v}"]
    worker  = [for k, v in var.worker_labels : "swarm-label:${k}:${v}"]
  }

  # Waits on the first manager until the swarm has every node Ready (swarm-agent status --wait).
  expected_nodes = var.manager_count + var.worker_count

  swarm_ports = [
    { protocol = "tcp", port = "2377" },
    { protocol = "tcp", port = "7946" },
    { protocol = "udp", port = "7946" },
    { protocol = "udp", port = "4789" },
  ]
}

resource "digitalocean_vpc" "this" {
  name     = "${local.prefix}-swarm"
  region   = var.region
  ip_range = var.vpc_cidr
}

resource "digitalocean_tag" "node" {
  name = "${local.prefix}-swarm-node"
}

resource "digitalocean_tag" "coordinator" {
  count = local.coordinator ? 1 : 0
  name  = "${local.prefix}-swarm-coordinator"
}

# The cluster's join secret: the coordinator registers the cluster with it and every agent
# authenticates with it. It sits in the Terraform state and in the droplets' user-data: keep
# the state private (the example uses an encrypted Spaces bucket).
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

  # DigitalOcean cannot give a droplet a chosen VPC address before it exists, so the
  # certificate names the coordinator by a DNS name only. Agents do not check names: they pin
  # this exact certificate by its sha256.
  dns_names             = ["swarm-coordinator.${local.cluster}.internal"]
  validity_period_hours = 87600
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth"]
}

# The DER of the certificate (public, not a secret), written only so its sha256 can be taken.
# On a machine without the file (a fresh CI checkout with remote state) Terraform plans to write
# it again; nodes ignore user_data changes, so that never replaces a droplet.
resource "local_file" "coordinator_cert_der" {
  count                = local.coordinator ? 1 : 0
  content_base64       = local.coordinator_cert_der_b64
  filename             = "${path.root}/.terraform/swarmstrap/${local.prefix}-coordinator.der"
  file_permission      = "0644"
  directory_permission = "0755"
}

resource "digitalocean_droplet" "coordinator" {
  #checkov:skip=CKV_DIO_2:SSH keys are optional (var.ssh_keys): nothing here needs SSH; the agent bootstraps the swarm from user-data.
  count = local.coordinator ? 1 : 0

  name       = "${local.prefix}-coordinator-1"
  region     = var.region
  size       = var.coordinator_size
  image      = var.image
  vpc_uuid   = digitalocean_vpc.this.id
  ssh_keys   = var.ssh_keys
  monitoring = true
  ipv6       = false
  tags       = concat([digitalocean_tag.coordinator[0].id], var.tags)

  user_data = templatefile("${local.cloud_init_dir}/coordinator.yaml.tftpl", {
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

  lifecycle {
    # A new image release or template edit must not replace the rendezvous of a running cluster.
    # So setting coordinator_adopt_running_swarm changes nothing on a running coordinator: it
    # takes effect only when the coordinator is replaced (terraform apply -replace=...).
    ignore_changes = [user_data, image]
  }
}

resource "digitalocean_droplet" "manager" {
  #checkov:skip=CKV_DIO_2:SSH keys are optional (var.ssh_keys): nothing here needs SSH; the agent bootstraps the swarm from user-data.
  count = var.manager_count

  name       = "${local.prefix}-manager-${count.index + 1}"
  region     = var.region
  size       = var.manager_size
  image      = var.image
  vpc_uuid   = digitalocean_vpc.this.id
  ssh_keys   = var.ssh_keys
  monitoring = true
  ipv6       = false
  tags       = concat([digitalocean_tag.node.id], var.tags, local.label_tags["manager"])
  user_data  = local.node_user_data["manager"]
  # Scale-in and destroy shut the droplet down (ACPI) before deleting it, so the agent's unit
  # stops with a poweroff job queued and runs `swarm-agent leave` (ExecStop). The provider
  # waits for the droplet to be off for the delete timeout (its default, 60 s, is shorter than
  # the leave: up to TimeoutStopSec=150s).
  graceful_shutdown = true

  timeouts {
    delete = "5m"
  }

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

resource "digitalocean_droplet" "worker" {
  #checkov:skip=CKV_DIO_2:SSH keys are optional (var.ssh_keys): nothing here needs SSH; the agent bootstraps the swarm from user-data.
  count = var.worker_count

  name       = "${local.prefix}-worker-${count.index + 1}"
  region     = var.region
  size       = var.worker_size
  image      = var.image
  vpc_uuid   = digitalocean_vpc.this.id
  ssh_keys   = var.ssh_keys
  monitoring = true
  ipv6       = false
  tags       = concat([digitalocean_tag.node.id], var.tags, local.label_tags["worker"])
  user_data  = local.node_user_data["worker"]
  # Scale-in and destroy shut the droplet down (ACPI) before deleting it, so the agent's unit
  # stops with a poweroff job queued and runs `swarm-agent leave` (ExecStop). The provider
  # waits for the droplet to be off for the delete timeout (its default, 60 s, is shorter than
  # the leave: up to TimeoutStopSec=150s).
  graceful_shutdown = true

  timeouts {
    delete = "5m"
  }

  lifecycle {
    ignore_changes = [user_data, image]
  }
}

resource "digitalocean_loadbalancer" "this" {
  count = length(var.lb_ports) > 0 ? 1 : 0

  name        = "${local.prefix}-swarm-lb"
  region      = var.region
  vpc_uuid    = digitalocean_vpc.this.id
  droplet_tag = digitalocean_tag.node.id

  dynamic "forwarding_rule" {
    for_each = var.lb_ports
    content {
      entry_protocol  = "tcp"
      entry_port      = forwarding_rule.value
      target_protocol = "tcp"
      target_port     = forwarding_rule.value
    }
  }

  healthcheck {
    protocol = "tcp"
    port     = var.lb_ports[0]
  }

  # Managers and workers must exist (with the tag) before the balancer is useful.
  depends_on = [digitalocean_droplet.manager]
}

resource "digitalocean_firewall" "nodes" {
  name = "${local.prefix}-swarm-nodes"
  tags = [digitalocean_tag.node.id]

  # Swarm control plane, gossip and overlay data plane: only inside the VPC.
  dynamic "inbound_rule" {
    for_each = local.swarm_ports
    content {
      protocol         = inbound_rule.value.protocol
      port_range       = inbound_rule.value.port
      source_addresses = [var.vpc_cidr]
    }
  }

  dynamic "inbound_rule" {
    for_each = length(var.ssh_allowed_cidrs) > 0 ? [1] : []
    content {
      protocol         = "tcp"
      port_range       = "22"
      source_addresses = var.ssh_allowed_cidrs
    }
  }

  # Published service ports: from the load balancer only.
  dynamic "inbound_rule" {
    for_each = length(var.lb_ports) > 0 ? var.lb_ports : []
    content {
      protocol                  = "tcp"
      port_range                = tostring(inbound_rule.value)
      source_load_balancer_uids = [digitalocean_loadbalancer.this[0].id]
    }
  }

  # Packages, the agent download, image pulls.
  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "icmp"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}

resource "digitalocean_firewall" "coordinator" {
  count = local.coordinator ? 1 : 0
  name  = "${local.prefix}-swarm-coordinator"
  tags  = [digitalocean_tag.coordinator[0].id]

  inbound_rule {
    protocol         = "tcp"
    port_range       = tostring(local.coordinator_port)
    source_addresses = [var.vpc_cidr]
  }

  dynamic "inbound_rule" {
    for_each = length(var.ssh_allowed_cidrs) > 0 ? [1] : []
    content {
      protocol         = "tcp"
      port_range       = "22"
      source_addresses = var.ssh_allowed_cidrs
    }
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "icmp"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}

# The coordinator's resources are counted (none with backend "etcd"): a state made before that
# keeps them, at index 0.
moved {
  from = digitalocean_tag.coordinator
  to   = digitalocean_tag.coordinator[0]
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
  from = digitalocean_droplet.coordinator
  to   = digitalocean_droplet.coordinator[0]
}

moved {
  from = digitalocean_firewall.coordinator
  to   = digitalocean_firewall.coordinator[0]
}
