# syntax=docker/dockerfile:1
# One image for every prfaas service; docker-compose.yml picks the service with its command
# (`python -m services.router|prefill|decode|pd|cachepool`) and configures it with PRFAAS_* variables.
#
#   docker build -t prfaas .
#   docker run --rm prfaas python -m services.router --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CPU build of torch first, from PyTorch's own index: on PyPI `torch==2.13.0` is the CUDA build
# (several GB of NVIDIA wheels). Its version, 2.13.0+cpu, satisfies the `torch==2.13.0` pin in
# pyproject.toml, so `pip install .` below keeps it. A layer of its own, so code changes reuse it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /tmp/prfaas-src
COPY pyproject.toml README.md ./
COPY prfaas ./prfaas
COPY services ./services
RUN pip install . && rm -rf /tmp/prfaas-src
WORKDIR /

# The embedded kimi-linear-tiny checkpoint is written here at build time, so a container never
# fetches or writes a model at runtime; the service user may read it, not change it.
ENV PRFAAS_CACHE_DIR=/opt/prfaas/cache
RUN python -c "from prfaas.model.tiny import ensure_tiny; print(ensure_tiny())" \
    && chmod -R a+rX /opt/prfaas

RUN useradd --create-home --uid 10001 --user-group prfaas
USER prfaas
WORKDIR /home/prfaas

# Services bind every interface inside their container (the default, 127.0.0.1, is for one machine).
ENV PRFAAS_HOST=0.0.0.0
CMD ["python", "-m", "services.router", "--help"]
