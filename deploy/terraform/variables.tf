variable "region" {
  description = "AWS region for the bucket and the database."
  type        = string
}

variable "name" {
  description = "Prefix of every resource's name (e.g. flywheel-prod)."
  type        = string
  default     = "flywheel"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,40}$", var.name))
    error_message = "name: lower-case letters, digits and '-', 3 to 41 characters, starting with a letter."
  }
}

variable "bucket_name" {
  description = "Globally unique name of the object-store bucket (snapshots, MLflow artifacts)."
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept before it expires."
  type        = number
  default     = 90
}

variable "vpc_id" {
  description = "VPC of the database (where the cluster runs)."
  type        = string
}

variable "db_subnet_ids" {
  description = "Private subnets (two availability zones at least) for the database."
  type        = list(string)
}

variable "db_allowed_security_group_ids" {
  description = "Security groups allowed to reach PostgreSQL on 5432 (the cluster's nodes)."
  type        = list(string)
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gb" {
  description = "Initial storage (GiB); grows up to db_max_allocated_storage_gb."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling (GiB)."
  type        = number
  default     = 200
}

variable "db_engine_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "17"
}

variable "db_multi_az" {
  description = "A standby in a second availability zone."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery)."
  type        = number
  default     = 14
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
