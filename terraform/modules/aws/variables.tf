variable "cluster_name" {
  description = "Name of the swarm cluster (part of the Secrets Manager secret names). Empty: the Terraform workspace name, lower-cased."
  type        = string
  default     = ""

  validation {
    condition     = var.cluster_name == "" || can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must be 1-32 lowercase letters, digits and '-', starting and ending with a letter or digit."
  }
}

variable "manager_count" {
  description = "Number of manager instances: 1, 3, 5 or 7 (an odd number keeps the raft quorum). Also the agents' target_managers."
  type        = number
  default     = 3

  validation {
    condition     = contains([1, 3, 5, 7], var.manager_count)
    error_message = "The manager_count must be 1, 3, 5 or 7: an odd number of managers keeps a raft quorum through a partition."
  }
}

variable "worker_count" {
  description = "Number of worker instances. Changing it adds or removes workers only; no other instance is touched."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_count >= 0 && var.worker_count <= 100 && floor(var.worker_count) == var.worker_count
    error_message = "The worker_count must be a whole number from 0 to 100."
  }
}

variable "docker_version" {
  description = "Docker engine package version to install from the distribution (e.g. 24.0.7-0ubuntu4), or \"distro\" for the distribution's current docker.io."
  type        = string
  default     = "distro"

  validation {
    condition     = can(regex("^[A-Za-z0-9.:~+-]+$", var.docker_version))
    error_message = "The docker_version must be \"distro\" or a package version such as 24.0.7-0ubuntu4."
  }
}

variable "agent_version" {
  description = "swarmstrap release to install (see release/README.md): each VM's installer downloads its SHA256SUMS from release_base_url, checks the minisign signature against release_public_key and installs the binary for the VM's architecture (x86_64 or arm64). Nothing else is needed."
  type        = string
  default     = "0.3.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+([-+][0-9A-Za-z.+-]+)?$", var.agent_version))
    error_message = "The agent_version must be a release version such as 0.3.0 (without a leading v)."
  }
}

variable "release_base_url" {
  description = "Where releases are published: release_base_url/vVERSION/ holds the binaries, SHA256SUMS and SHA256SUMS.minisig. Default: the project's GitHub releases. For an air-gapped mirror, copy those files to any HTTPS directory with the same layout: the signature is still checked. Also written to each agent's config ([release] base_url) for `swarm-agent upgrade`."
  type        = string
  default     = "https://github.com/swarmstrap/swarmstrap/releases/download"

  validation {
    condition     = can(regex("^https://[A-Za-z0-9._~:/%@+=,-]+$", var.release_base_url)) && length(var.release_base_url) <= 512
    error_message = "The release_base_url must be an https:// URL of at most 512 characters (letters, digits and ._~:/%@+=,- only), e.g. https://github.com/swarmstrap/swarmstrap/releases/download."
  }
}

variable "release_public_key" {
  description = "The minisign public key (the second line of a minisign.pub file) that must have signed the release's SHA256SUMS. Default: the project's release key, release/minisign.pub. Also written to each agent's config ([release] public_key) for `swarm-agent upgrade`."
  type        = string
  default     = "RWR4vlipMu05hIPtqkMIxHLPXRyTYNBdA6Bn7gfr86Emuv6kwwF887N7"

  validation {
    condition     = can(regex("^RW[A-Za-z0-9+/]{54}$", var.release_public_key))
    error_message = "The release_public_key must be the key line of a minisign public key (56 base64 characters starting with RW), e.g. the second line of release/minisign.pub."
  }
}

variable "agent_url" {
  description = "Only for a mirror without the release's signature files: HTTPS URL of a static swarm-agent binary for the nodes' architecture ({version} is replaced by agent_version), installed after checking agent_sha256 and nothing else (no signature). Set agent_sha256 with it. Default null: the signed release agent_version from release_base_url."
  type        = string
  default     = null

  validation {
    condition     = var.agent_url == null ? true : (can(regex("^https://[^ ]+$", var.agent_url)) && length(var.agent_url) <= 1024)
    error_message = "The agent_url must be null or an https:// URL (at most 1024 characters)."
  }
}

variable "agent_sha256" {
  description = "With agent_url only: sha256 (64 lowercase hex digits) of the binary at agent_url. A node whose download does not match installs nothing and fails its boot. Default null."
  type        = string
  default     = null

  validation {
    condition     = var.agent_sha256 == null ? true : can(regex("^[0-9a-f]{64}$", var.agent_sha256))
    error_message = "The agent_sha256 must be null or 64 lowercase hex digits (sha256sum of the binary at agent_url)."
  }
}

variable "lb_config_enabled" {
  description = "Whether agents write the nginx upstream file at /loadbalancer/default.conf on every node (for an nginx service that bind-mounts /loadbalancer)."
  type        = bool
  default     = true
}

variable "docker_log_max_size" {
  description = "Docker json-file log rotation: largest size of one container log file, e.g. 10m."
  type        = string
  default     = "10m"

  validation {
    condition     = can(regex("^[0-9]+[kmg]$", var.docker_log_max_size))
    error_message = "The docker_log_max_size must be a number followed by k, m or g, e.g. 10m."
  }
}

variable "docker_log_max_file" {
  description = "Docker json-file log rotation: number of log files kept per container."
  type        = number
  default     = 3

  validation {
    condition     = var.docker_log_max_file >= 1 && var.docker_log_max_file <= 100 && floor(var.docker_log_max_file) == var.docker_log_max_file
    error_message = "The docker_log_max_file must be a whole number from 1 to 100."
  }
}

variable "vpc_cidr" {
  description = "IPv4 range of the cluster's VPC; split into one public and one private subnet per availability zone."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 22
    error_message = "The vpc_cidr must be an IPv4 CIDR block of size /22 or larger, e.g. 10.20.0.0/16."
  }
}

variable "az_count" {
  description = "Number of availability zones to spread subnets and instances over (2 or 3)."
  type        = number
  default     = 2

  validation {
    condition     = contains([2, 3], var.az_count)
    error_message = "The az_count must be 2 or 3."
  }
}

variable "manager_instance_type" {
  description = "EC2 instance type of the managers: x86_64 (e.g. t3.small) or arm64/Graviton (e.g. t4g.small, m7g.large, c7g.large). The default AMI follows its architecture, and the installer picks the matching swarm-agent build."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.manager_instance_type))
    error_message = "The manager_instance_type must be an EC2 instance type such as t3.small (x86_64) or t4g.small (arm64/Graviton); the module checks its architecture (x86_64 or arm64) when it plans."
  }
}

variable "worker_instance_type" {
  description = "EC2 instance type of the workers: x86_64 (e.g. t3.small) or arm64/Graviton (e.g. t4g.small, m7g.large, c7g.large). The default AMI follows its architecture, and the installer picks the matching swarm-agent build."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.worker_instance_type))
    error_message = "The worker_instance_type must be an EC2 instance type such as t3.small (x86_64) or t4g.small (arm64/Graviton); the module checks its architecture (x86_64 or arm64) when it plans."
  }
}

variable "ami_id" {
  description = "AMI for every instance. Empty: the latest Amazon Linux 2023 AMI for each instance type's architecture (x86_64 or arm64, from its public SSM parameter). Ubuntu 22.04/24.04 and Debian 12 AMIs work too; they must run the SSM agent for status_commands and match the architecture of both instance types."
  type        = string
  default     = ""

  validation {
    condition     = var.ami_id == "" || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "The ami_id must be empty or an AMI id such as ami-0123456789abcdef0."
  }
}

variable "root_volume_size" {
  description = "Size in GiB of each instance's encrypted gp3 root volume (images live here)."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 16384
    error_message = "The root_volume_size must be between 8 and 16384 GiB."
  }
}

variable "ssh_key_name" {
  description = "Name of an EC2 key pair to install on the instances. Empty: none (use SSM Session Manager; the instances have no public address anyway)."
  type        = string
  default     = ""
}

variable "secret_name_prefix" {
  description = "Prefix of the cluster's Secrets Manager secrets: the module creates one named PREFIX, the cluster name, '-' and a random hex suffix (every node), and one with the same name followed by /managers (managers only). The random suffix makes every cluster's names new (a deleted secret's name stays blocked during its recovery window)."
  type        = string
  default     = "swarmstrap/"

  validation {
    condition     = can(regex("^[A-Za-z0-9/_+=.@-]{0,100}$", var.secret_name_prefix))
    error_message = "The secret_name_prefix may contain only letters, digits and /_+=.@- (at most 100 characters)."
  }
}

variable "kms_key_id" {
  description = "ARN of a customer-managed KMS key for both secrets (the nodes may use it through Secrets Manager only). Empty: Secrets Manager's AWS-managed key (aws/secretsmanager)."
  type        = string
  default     = ""

  validation {
    condition     = var.kms_key_id == "" || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$", var.kms_key_id))
    error_message = "The kms_key_id must be empty or a KMS key ARN such as arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab."
  }
}

variable "secret_recovery_window_days" {
  description = "Days the cluster's two secrets stay restorable after `terraform destroy` (scheduled for deletion, not billed meanwhile): 7-30, or 0 to delete them at once. Their names stay blocked during the window."
  type        = number
  default     = 7

  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30 && floor(var.secret_recovery_window_days) == var.secret_recovery_window_days)
    error_message = "The secret_recovery_window_days must be 0 (delete at once) or a whole number from 7 to 30."
  }
}

variable "advertise_addr" {
  description = "How agents pick the address they advertise to the swarm: aws (the private address from the instance metadata, IMDSv2), interface:NAME, auto, or an IP."
  type        = string
  default     = "aws"

  validation {
    condition     = can(regex("^(auto|aws|interface:[A-Za-z0-9_.-]+|[0-9.]+)$", var.advertise_addr))
    error_message = "The advertise_addr must be auto, aws, interface:NAME or an IPv4 address."
  }
}

variable "lb_ports" {
  description = "TCP ports the network load balancer forwards to the same port on every node (the swarm routing mesh). Empty: no load balancer."
  type        = list(number)
  default     = [80]

  validation {
    condition     = alltrue([for p in var.lb_ports : p >= 1 && p <= 65535 && !contains([2377, 2378, 7946, 4789, 22], p)])
    error_message = "Each lb_ports entry must be a TCP port 1-65535 other than 22, the swarm ports 2377, 7946 and 4789, and the agents' relay port 2378."
  }
}

variable "lb_allowed_cidrs" {
  description = "Source CIDR blocks allowed to reach the load balancer's ports."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.lb_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "Every entry of lb_allowed_cidrs must be a CIDR block such as 0.0.0.0/0 or 203.0.113.0/24."
  }
}

variable "tags" {
  description = "Extra tags for every AWS resource. The instances publish their tags in the instance metadata (the agents read node labels there), which allows tag keys of letters, digits and + - = . , _ : @ only."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : can(regex("^[A-Za-z0-9+=.,_:@-]{1,128}$", k)) && !contains([".", "..", "_index"], k)])
    error_message = "Every key of tags must be 1-128 letters, digits or + - = . , _ : @ (no spaces or '/'), and not '.', '..' or '_index': the instances expose their tags in the instance metadata (instance_metadata_tags), where AWS allows no other keys."
  }
}

variable "cloud_config_extra" {
  description = "Your own cloud-config (a YAML document starting with #cloud-config), added to every manager and worker: it becomes a second part of a MIME multipart user-data with Merge-Type list(append)+dict(no_replace,recurse_list)+str(), so its packages, runcmd and write_files are appended to swarmstrap's (its runcmd runs after the agent is installed and started, in the same `set -e` script) and it cannot replace a key swarmstrap sets. Empty: swarmstrap's cloud-config alone. Nodes ignore user_data changes: it applies to nodes created after the change."
  type        = string
  default     = ""

  validation {
    condition     = var.cloud_config_extra == "" || (can(regex("^#cloud-config[ \t]*\r?\n", var.cloud_config_extra)) && length(regexall("swarmstrap-cloud-config-part", var.cloud_config_extra)) == 0)
    error_message = "The cloud_config_extra must be empty or a cloud-config document whose first line is #cloud-config, and must not contain the text swarmstrap-cloud-config-part (the MIME boundary of the user-data)."
  }
}

variable "lb_reload_service" {
  description = "Swarm service whose nginx containers the agents also reload (SIGHUP) after rewriting /loadbalancer/default.conf, e.g. minitwit_loadbalancer (stack name, underscore, service name). Empty: only the containers labelled swarmstrap.lb=nginx are reloaded (the agent's reload_label)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$", var.lb_reload_service))
    error_message = "The lb_reload_service must be empty or a swarm service name (letters, digits, '_', '.', '-'; at most 63 characters), e.g. minitwit_loadbalancer."
  }
}

variable "manager_labels" {
  description = "Docker node labels for every manager, as the instance tag swarm.label.KEY = VALUE (read through the instance metadata tags); the agent reads its node's tags and sets the labels (placement constraints such as node.labels.KEY == VALUE). Default: none."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, val in var.manager_labels : can(regex("^[A-Za-z0-9_.-]{1,64}$", k)) && can(regex("^[A-Za-z0-9_.:/=@+ -]{0,128}$", val))])
    error_message = "Every key of manager_labels must be 1-64 letters, digits, '_', '.' or '-' (the instance tag key is swarm.label.KEY; instance metadata tags allow no '/' or spaces in keys), and every value 0-128 letters, digits, spaces or _ . : / = @ + -."
  }
}

variable "worker_labels" {
  description = "Docker node labels for every worker, as the instance tag swarm.label.KEY = VALUE (read through the instance metadata tags); the agent reads its node's tags and sets the labels (placement constraints such as node.labels.KEY == VALUE). Default: none."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, val in var.worker_labels : can(regex("^[A-Za-z0-9_.-]{1,64}$", k)) && can(regex("^[A-Za-z0-9_.:/=@+ -]{0,128}$", val))])
    error_message = "Every key of worker_labels must be 1-64 letters, digits, '_', '.' or '-' (the instance tag key is swarm.label.KEY; instance metadata tags allow no '/' or spaces in keys), and every value 0-128 letters, digits, spaces or _ . : / = @ + -."
  }
}

variable "backend" {
  description = "The agents' rendezvous: \"secrets-manager\" (two Secrets Manager secrets the module creates; nothing to run), \"coordinator\" (a swarm-coordinator instance on a fixed private address, coordinator_private_ip, as the DigitalOcean and Scaleway modules run it; no Secrets Manager permissions on the nodes) or \"etcd\" (your etcd cluster: etcd_endpoints, etcd_ca_pem and credentials; the module creates no coordinator, no secret and no Secrets Manager permission). Changing it on a running cluster replaces nothing (nodes ignore user_data changes) but leaves the nodes on the old backend: set it when creating the cluster."
  type        = string
  default     = "secrets-manager"

  validation {
    condition     = contains(["secrets-manager", "coordinator", "etcd"], var.backend)
    error_message = "The backend must be \"secrets-manager\", \"coordinator\" or \"etcd\"."
  }
}

variable "coordinator_instance_type" {
  description = "backend \"coordinator\" only: EC2 instance type of the coordinator (it is tiny), of the managers' architecture (it runs their AMI)."
  type        = string
  default     = "t3.micro"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.coordinator_instance_type))
    error_message = "The coordinator_instance_type must be an EC2 instance type such as t3.micro (x86_64) or t4g.micro (arm64/Graviton)."
  }
}

variable "coordinator_private_ip" {
  description = "backend \"coordinator\" only: the coordinator's fixed private address (in the first node subnet; its certificate names it and every node is told it). Empty: host 10 of the first node subnet."
  type        = string
  default     = ""

  validation {
    condition     = var.coordinator_private_ip == "" || can(regex("^([0-9]{1,3}\\.){3}[0-9]{1,3}$", var.coordinator_private_ip))
    error_message = "The coordinator_private_ip must be empty or an IPv4 address inside the first node subnet, e.g. 10.20.128.10."
  }
}

variable "coordinator_binary_url" {
  description = "Only for a mirror without the release's signature files: HTTPS URL of a static swarm-coordinator binary for the coordinator's architecture ({version} is replaced by agent_version), installed after checking coordinator_binary_sha256 only. Default null: the signed release agent_version from release_base_url."
  type        = string
  default     = null

  validation {
    condition     = var.coordinator_binary_url == null ? true : (can(regex("^https://[^ ]+$", var.coordinator_binary_url)) && length(var.coordinator_binary_url) <= 1024)
    error_message = "The coordinator_binary_url must be null or an https:// URL (at most 1024 characters)."
  }
}

variable "coordinator_binary_sha256" {
  description = "With coordinator_binary_url only: sha256 (64 lowercase hex digits) of the binary at coordinator_binary_url. Default null."
  type        = string
  default     = null

  validation {
    condition     = var.coordinator_binary_sha256 == null ? true : can(regex("^[0-9a-f]{64}$", var.coordinator_binary_sha256))
    error_message = "The coordinator_binary_sha256 must be null or 64 lowercase hex digits (sha256sum of the binary)."
  }
}

variable "coordinator_adopt_running_swarm" {
  description = "backend \"coordinator\" only: true only for the apply that replaces the coordinator of a running swarm (its VM or database lost; the certificate and cluster secret stay in the state), e.g. `terraform apply -replace='module.NAME.aws_instance.coordinator[0]' -var coordinator_adopt_running_swarm=true`: the new coordinator creates the cluster awaiting adoption (`swarm-coordinator cluster create --adopt`) and refuses every init claim until the running swarm's leader agent adopts it again (seconds after it is up), so no node starting before that can run a second `swarm init`. Never for a brand-new cluster: it would not form until someone runs `swarm-coordinator cluster allow-init NAME` on the coordinator. The coordinator ignores user_data changes, so setting or unsetting it never touches a running coordinator."
  type        = bool
  default     = false
}

variable "vpc_id" {
  description = "Your VPC to run in (with subnet_ids). Empty: the module creates its own VPC (vpc_cidr, az_count) with public and private subnets and a NAT gateway."
  type        = string
  default     = ""

  validation {
    condition     = var.vpc_id == "" || can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "The vpc_id must be empty or a VPC id such as vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  description = "With vpc_id: the subnets of vpc_id the nodes (and the coordinator) go into, spread round-robin; private subnets with a route out (a NAT gateway) for packages, the release download and the AWS APIs. Empty without vpc_id."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Every entry of subnet_ids must be a subnet id such as subnet-0123456789abcdef0."
  }
}

variable "lb_subnet_ids" {
  description = "With vpc_id: public subnets of vpc_id for an internet-facing network load balancer. Empty: the load balancer is internal, in subnet_ids."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.lb_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Every entry of lb_subnet_ids must be a subnet id such as subnet-0123456789abcdef0."
  }
}

variable "etcd_endpoints" {
  description = "backend \"etcd\" only: client URLs of your etcd cluster's members, https://HOST:PORT (e.g. [\"https://10.0.0.5:2379\", \"https://10.0.0.6:2379\"]); the agents fail over between them. The nodes must be able to reach them (same network, peering or a VPN). At least one with backend \"etcd\"; leave it empty with the other backends."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.etcd_endpoints) <= 16 && alltrue([for e in var.etcd_endpoints : can(regex("^https://(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?$", e))])
    error_message = "Every entry of etcd_endpoints must be the https:// client URL of an etcd member, https://HOST or https://HOST:PORT without a path (e.g. https://10.0.0.5:2379), and there may be at most 16. Plain http:// is refused: the etcd password and the swarm join tokens travel over it."
  }
}

variable "etcd_prefix" {
  description = "backend \"etcd\" only: the cluster's key prefix in etcd, starting and ending with \"/\". Empty: /swarmstrap/CLUSTER/ (the agent's default). The manager join token lives beside it, under the prefix without its trailing \"/\" followed by .managers/ (default /swarmstrap/CLUSTER.managers/), which only the manager role may read; output etcd_prefixes gives both (see the README, \"etcd\")."
  type        = string
  default     = ""

  validation {
    condition     = var.etcd_prefix == "" || (can(regex("^/[!-~]*[!-.0-~]/$", var.etcd_prefix)) && length(var.etcd_prefix) <= 256)
    error_message = "The etcd_prefix must be empty (the default /swarmstrap/CLUSTER/) or a key prefix that starts and ends with \"/\", e.g. /swarmstrap/prod/: printable ASCII without spaces, at most 256 characters, not \"/\" alone (the whole keyspace) and not ending in \"//\"."
  }
}

variable "etcd_ca_pem" {
  description = "backend \"etcd\" (required there: every endpoint is https): PEM bundle of the CA(s) that signed your etcd members' server certificates, e.g. file(\"etcd-ca.pem\"). Written to /etc/swarm-agent/etcd-ca.pem on every node."
  type        = string
  default     = ""

  validation {
    condition     = var.etcd_ca_pem == "" || length(regexall("-----BEGIN CERTIFICATE-----", var.etcd_ca_pem)) > 0
    error_message = "The etcd_ca_pem must be empty or a PEM bundle with at least one -----BEGIN CERTIFICATE----- block, e.g. file(\"etcd-ca.pem\")."
  }
}

variable "etcd_client_cert_pem" {
  description = "backend \"etcd\": PEM client certificate the agents present to etcd (etcd's --client-cert-auth), with etcd_client_key_pem. Empty: none. Written to /etc/swarm-agent/etcd-client.pem. Every node presents the same certificate: separate the managers' and workers' etcd roles by user (etcd_user, etcd_worker_user), not by the certificate's name."
  type        = string
  default     = ""

  validation {
    condition     = var.etcd_client_cert_pem == "" || length(regexall("-----BEGIN CERTIFICATE-----", var.etcd_client_cert_pem)) > 0
    error_message = "The etcd_client_cert_pem must be empty or a PEM certificate (-----BEGIN CERTIFICATE-----), e.g. file(\"etcd-client.pem\")."
  }
}

variable "etcd_client_key_pem" {
  description = "backend \"etcd\": the unencrypted PEM private key of etcd_client_cert_pem (sensitive). Written to /etc/swarm-agent/etcd-client.key (0600) through the user-data; it is kept in the Terraform state."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.etcd_client_key_pem == "" || can(regex("-----BEGIN (RSA |EC )?PRIVATE KEY-----", var.etcd_client_key_pem))
    error_message = "The etcd_client_key_pem must be empty or an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY), e.g. file(\"etcd-client.key\")."
  }
}

variable "etcd_user" {
  description = "backend \"etcd\": the managers' etcd user (etcd auth), with etcd_password. Its role needs readwrite on the cluster's prefix and on the managers' prefix (the manager role; see the README, \"etcd\"). The workers use it too unless etcd_worker_user is set. Empty: no etcd auth (the client certificate only)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[[:graph:]]{0,128}$", var.etcd_user))
    error_message = "The etcd_user must be empty or an etcd user name of 1-128 printable ASCII characters without spaces."
  }
}

variable "etcd_password" {
  description = "backend \"etcd\": the password of etcd_user (sensitive). Written to /etc/swarm-agent/etcd-password (0600) through the user-data; it is kept in the Terraform state."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.etcd_password == "" || (can(regex("^[[:graph:]]([[:print:]]*[[:graph:]])?$", var.etcd_password)) && length(var.etcd_password) <= 256)
    error_message = "The etcd_password must be empty or 1-256 printable ASCII characters that neither start nor end with a space (the agent reads the password file as it is)."
  }
}

variable "etcd_worker_user" {
  description = "backend \"etcd\", optional: the workers' own etcd user, with etcd_worker_password, e.g. one whose role has readwrite on the cluster's prefix only (the worker role): the workers then cannot read the manager join token. Empty: the workers use etcd_user and etcd_password."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[[:graph:]]{0,128}$", var.etcd_worker_user))
    error_message = "The etcd_worker_user must be empty or an etcd user name of 1-128 printable ASCII characters without spaces."
  }
}

variable "etcd_worker_password" {
  description = "backend \"etcd\", with etcd_worker_user: its password (sensitive). Written to /etc/swarm-agent/etcd-password (0600) on the workers through their user-data; it is kept in the Terraform state."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.etcd_worker_password == "" || (can(regex("^[[:graph:]]([[:print:]]*[[:graph:]])?$", var.etcd_worker_password)) && length(var.etcd_worker_password) <= 256)
    error_message = "The etcd_worker_password must be empty or 1-256 printable ASCII characters that neither start nor end with a space (the agent reads the password file as it is)."
  }
}
