# MLflow's server, at the version the project runs and tests against (tests/code/test_infra.py
# holds these pins to the installed ones), with the PostgreSQL driver and boto3 for S3 (MinIO)
# artifacts; as a user of its own, whose working directory keeps the basic-auth user store.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.43.117
RUN useradd --create-home --uid 10002 mlflow && mkdir -p /var/lib/mlflow \
    && chown mlflow /var/lib/mlflow
COPY mlflow-auth.ini /etc/mlflow/auth.ini
USER mlflow
WORKDIR /var/lib/mlflow
