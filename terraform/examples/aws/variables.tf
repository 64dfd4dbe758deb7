variable "region" {
  description = "AWS region for the cluster, e.g. eu-west-1."
  type        = string
  default     = "eu-west-1"
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
