# MLflow's server with the PostgreSQL driver and boto3 for S3 (MinIO) artifacts.
FROM ghcr.io/mlflow/mlflow:v3.6.0
RUN pip install --no-cache-dir psycopg2-binary==2.9.10 boto3==1.40.0
