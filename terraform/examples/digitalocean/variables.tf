variable "region" {
  description = "DigitalOcean region slug."
  type        = string
  default     = "fra1"
}

variable "worker_count" {
  description = "Number of worker droplets (scale with `terraform apply -var worker_count=N`)."
  type        = number
  default     = 2
}

variable "agent_url" {
  description = "HTTPS URL of the swarm-agent release binary ({version} is replaced by the module's agent_version)."
  type        = string
}

variable "agent_sha256" {
  description = "sha256 of the swarm-agent binary."
  type        = string
}

variable "coordinator_binary_url" {
  description = "HTTPS URL of the swarm-coordinator release binary."
  type        = string
}

variable "coordinator_binary_sha256" {
  description = "sha256 of the swarm-coordinator binary."
  type        = string
}

variable "ssh_keys" {
  description = "IDs or fingerprints of SSH keys in your DigitalOcean account (deploy.sh deploys over SSH)."
  type        = list(string)
}

variable "ssh_allowed_cidrs" {
  description = "Where you run deploy.sh from, e.g. [\"203.0.113.7/32\"]."
  type        = list(string)
}

variable "coordinator_adopt_running_swarm" {
  description = "Only on the command line of the apply that replaces the coordinator of the running swarm: terraform apply -replace='module.swarm.digitalocean_droplet.coordinator' -var coordinator_adopt_running_swarm=true. Never for a new cluster."
  type        = bool
  default     = false
}
