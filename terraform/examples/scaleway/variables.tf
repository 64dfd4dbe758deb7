variable "zone" {
  description = "Scaleway zone, e.g. fr-par-1."
  type        = string
  default     = "fr-par-1"
}

variable "worker_count" {
  description = "Number of worker instances (scale with `terraform apply -var worker_count=N`)."
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

variable "ssh_allowed_cidrs" {
  description = "Where you may SSH from, e.g. [\"203.0.113.7/32\"]; empty for no SSH."
  type        = list(string)
  default     = []
}

variable "coordinator_adopt_running_swarm" {
  description = "Only on the command line of the apply that replaces the coordinator of the running swarm: terraform apply -replace='module.swarm.scaleway_instance_server.coordinator' -var coordinator_adopt_running_swarm=true. Never for a new cluster."
  type        = bool
  default     = false
}
