# One image for every evguard process in docker-compose: worker, consumers,
# dashboard, Prefect worker, MLflow server and the SMTP sink.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    EVGUARD_STATE_DIR=/var/lib/evguard \
    EVGUARD_DATA_DIR=/var/lib/evguard/data

# eif, isotree and the mypyc build (scripts/build_native.py) compile C
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# bytecode compiled into the image: the Kubernetes pods run read-only, so Python could not
# cache it, and every process start would compile every module it imports again
RUN uv sync --frozen --no-dev --no-install-project --compile-bytecode
COPY . .
RUN uv sync --frozen --no-dev --compile-bytecode && python -m compileall -q /app \
    && python scripts/build_native.py

EXPOSE 8050 9108 5000
CMD ["evguard", "--help"]
