# The custseg Airflow image: the official Airflow 3.3.2 image plus this package (and s3fs for
# s3:// artifacts). Used by every service of docker-compose.yaml, so scheduler, api-server,
# dag-processor, triggerer and Celery workers all run the same code.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION

# Sources only (no data, no artifacts; see .dockerignore). Installed as the airflow user, as the
# image's docs require; airflow itself is pinned so pip never up- or downgrades it, and celery
# stays below 5.7 (5.7.0 breaks apache-airflow-providers-celery 3.26.0 at import).
COPY --chown=airflow:root pyproject.toml README.md /opt/custseg/
COPY --chown=airflow:root src /opt/custseg/src
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "celery<5.7" \
        "/opt/custseg[s3,serve]" \
    && python -c "import custseg.pipeline, custseg.serve, s3fs"

# The DAG file is mounted at /opt/airflow/dags by docker-compose.yaml; the bundled sample is
# copied so a first run works without any mount.
COPY --chown=airflow:root data/sample /opt/airflow/data/sample
