-- Extra databases beside Airflow's: the tuneloop error-case store and MLflow's tracking/registry store.
CREATE DATABASE tuneloop OWNER airflow;
CREATE DATABASE mlflow OWNER airflow;
