-- The MLflow database is POSTGRES_DB; Prefect gets its own.
CREATE DATABASE prefect OWNER mllm;
