# The quant-engine image: the official Airflow 3.3.2 image for Python 3.11 (the SageMaker SDK and
# Airflow 3 cannot share a 3.12 environment) with the pinned requirements and the package installed.
# It bakes in no secrets: the JWT secret, the API secret key, the database password and the login
# come from the environment at run time (see docker-compose.yaml).
FROM apache/airflow:3.3.2-python3.11

USER airflow
WORKDIR /opt/airflow

# Dependencies first, so a code change does not reinstall them.
COPY --chown=airflow:root requirements.txt /opt/airflow/quant-engine/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/airflow/quant-engine/requirements.txt

COPY --chown=airflow:root pyproject.toml README.md /opt/airflow/quant-engine/
COPY --chown=airflow:root include /opt/airflow/quant-engine/include
RUN pip install --no-cache-dir --no-deps --no-build-isolation /opt/airflow/quant-engine

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins

ENV QE_HOME=/opt/airflow/qe_home \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
RUN mkdir -p /opt/airflow/qe_home

USER airflow
