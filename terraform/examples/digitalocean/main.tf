# minitwit on a Docker Swarm on DigitalOcean: `terraform apply` ends in a running swarm (the
# agents form it by themselves), then ./deploy.sh deploys stack.yml onto it.

terraform {
  required_version = ">= 1.6.0"

  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = ">= 2.34.0, < 3.0.0"
    }
  }

  # Remote state in a Spaces bucket (S3-compatible). Create the bucket first and export
  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY with a Spaces access key. Edit bucket, key and
  # endpoint to yours; backend blocks cannot use variables.
  backend "s3" {
    endpoints = {
      s3 = "https://fra1.digitaloceanspaces.com"
    }
    bucket                      = "minitwit-terraform"
    key                         = "minitwit/terraform.tfstate"
    region                      = "us-east-1" # ignored by Spaces, required by the backend
    skip_credentials_validation = true
    skip_requesting_account_id  = true
    skip_metadata_api_check     = true
    skip_region_validation      = true
    skip_s3_checksum            = true
  }
}

# The token comes from the DIGITALOCEAN_TOKEN environment variable.
provider "digitalocean" {}

module "swarm" {
  source = "../../modules/digitalocean"

  region        = var.region
  manager_count = 3
  worker_count  = var.worker_count

  # The release to install; its binaries are checked against the signed SHA256SUMS.
  agent_version = var.agent_version

  # Only with -replace of the coordinator while the swarm runs (see the module README).
  coordinator_adopt_running_swarm = var.coordinator_adopt_running_swarm

  ssh_keys          = var.ssh_keys
  ssh_allowed_cidrs = var.ssh_allowed_cidrs
  lb_ports          = [80]

  # stack.yml's nginx (stack minitwit, service loadbalancer): the agents reload it (SIGHUP) after
  # rewriting /loadbalancer/default.conf. Its containers also carry the swarmstrap.lb=nginx
  # label, which the agents reload by default; naming the service covers a stack file without it.
  lb_reload_service = "minitwit_loadbalancer"
}
