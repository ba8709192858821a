terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }

  # Keep state remote and locked in a real account, e.g.:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "flywheel/terraform.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "app.kubernetes.io/part-of" = "flywheel" }, var.tags)
  }
}
