-- Run once by the postgres image on an empty data volume: POSTGRES_DB creates Dagster's database,
-- MLflow's backend store gets its own.
CREATE DATABASE mlflow;
