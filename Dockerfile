# The image docker-compose.yml runs for the MLflow server, the Prefect server and worker, and init:
# this checkout with requirements.lock installed hash-checked, as `make setup` installs it.
# (Not built by this project's tests: their machine has no Docker engine.)
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/fashionops
COPY requirements.lock pyproject.toml ./
# the uv installer first (its own hashes are in the lock), then every locked package
RUN awk '/^uv==/{p=1} p{print; if ($0 !~ /\\$/) exit}' requirements.lock > /tmp/uv-requirement.txt \
    && pip install -q --disable-pip-version-check --require-hashes --no-deps -r /tmp/uv-requirement.txt \
    && uv pip install --system --require-hashes -r requirements.lock
COPY . .
RUN uv pip install --system --no-deps -e . \
    && git config --global user.email fashionops@localhost && git config --global user.name fashionops
