output "bucket_name" {
  description = "The bucket: store.url = s3://<bucket>/flywheel, MLflow's --artifacts-destination s3://<bucket>/mlartifacts."
  value       = aws_s3_bucket.data.bucket
}

output "bucket_arn" {
  description = "For the IAM policy of flywheel's and MLflow's role."
  value       = aws_s3_bucket.data.arn
}

output "db_endpoint" {
  description = "host:port of PostgreSQL (MLflow: postgresql+psycopg://flywheel:<password>@<endpoint>/mlflow)."
  value       = aws_db_instance.mlflow.endpoint
}

output "db_master_user_secret_arn" {
  description = "Secrets Manager secret holding the flywheel user's password."
  value       = aws_db_instance.mlflow.master_user_secret[0].secret_arn
}
