-- Runs once, on an empty data volume (the image's /docker-entrypoint-initdb.d).
-- POSTGRES_DB (flywheel) holds the audit ledger, rollout state, prediction log, monitor
-- state and Optuna trials; source is the operational data the loop ingests; mlflow is the
-- MLflow server's backend store. All three belong to POSTGRES_USER (flywheel).
CREATE DATABASE source OWNER flywheel;
CREATE DATABASE mlflow OWNER flywheel;
