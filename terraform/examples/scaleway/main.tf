# A Docker Swarm on Scaleway: `terraform apply` ends in a running swarm. Credentials come from
# SCW_ACCESS_KEY / SCW_SECRET_KEY / SCW_DEFAULT_PROJECT_ID. Node names follow the workspace:
# `terraform workspace new dev` gives dev-manager-1, dev-worker-1, ...

terraform {
  required_version = ">= 1.3.0"

  required_providers {
    scaleway = {
      source  = "scaleway/scaleway"
      version = ">= 2.49.0, < 3.0.0"
    }
  }
}

provider "scaleway" {
  zone = var.zone
}

module "swarm" {
  source = "../../modules/scaleway"

  zone          = var.zone
  manager_count = 3
  worker_count  = var.worker_count

  # The release to install; its binaries are checked against the signed SHA256SUMS.
  agent_version = var.agent_version

  # Only with -replace of the coordinator while the swarm runs (see the module README).
  coordinator_adopt_running_swarm = var.coordinator_adopt_running_swarm

  ssh_allowed_cidrs = var.ssh_allowed_cidrs
  lb_ports          = [80]
}
