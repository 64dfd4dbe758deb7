# A Docker Swarm on AWS: `terraform apply` ends in a running swarm. The agents rendezvous through
# two Secrets Manager secrets the module creates (a shared one, and one only the managers' role
# can reach), or with -var backend=coordinator through a coordinator instance; reach the nodes
# with SSM Session Manager.

terraform {
  required_version = ">= 1.3.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.31.0, < 7.0.0"
    }
  }
}

provider "aws" {
  region = var.region
}

module "swarm" {
  source = "../../modules/aws"

  manager_count = 3
  worker_count  = var.worker_count

  # The release to install; its binaries are checked against the signed SHA256SUMS.
  agent_version = var.agent_version

  backend = var.backend
  # Only with backend = "coordinator" and -replace of the coordinator while the swarm runs
  # (see the module README).
  coordinator_adopt_running_swarm = var.coordinator_adopt_running_swarm

  lb_ports = [80]
}
