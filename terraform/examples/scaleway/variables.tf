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

variable "agent_version" {
  description = "swarmstrap release to install, e.g. 0.3.0: every VM downloads it and checks its signature (the project's key). Upgrade a running cluster with `swarm-agent upgrade` (see README.md, \"Install\")."
  type        = string
  default     = "0.3.0"
}

variable "ssh_allowed_cidrs" {
  description = "Where you may SSH from, e.g. [\"203.0.113.7/32\"]; empty for no SSH."
  type        = list(string)
  default     = []
}

variable "coordinator_adopt_running_swarm" {
  description = "Only on the command line of the apply that replaces the coordinator of the running swarm: terraform apply -replace='module.swarm.scaleway_instance_server.coordinator[0]' -var coordinator_adopt_running_swarm=true. Never for a new cluster."
  type        = bool
  default     = false
}
