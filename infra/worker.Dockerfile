# The worker image: the project on a CUDA runtime, for `uib serve`, process workers and the
# Kubernetes GPU pool. Build from the project root:
#   docker build -f infra/worker.Dockerfile -t uib-worker:latest .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# UV_PYTHON_INSTALL_DIR: uv's own Python goes under /opt, not /root, which the `uib` user below
# cannot enter (the venv's interpreter is a link into it).
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# git: the data repository is a git + DVC repository.
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.8.22 /uv /usr/local/bin/uv
RUN uv venv /opt/venv --python 3.11

# pyproject pins torch==2.13.0 (the CPU build in development); here the CUDA build of the same
# version comes first, and the pin is satisfied by it.
RUN uv pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

WORKDIR /opt/uib
COPY pyproject.toml README.md prefect.yaml ./
COPY uib ./uib
COPY tasks ./tasks
COPY flows ./flows
RUN uv pip install ".[pipeline]"

RUN useradd --create-home --uid 10001 uib && mkdir -p /state && chown uib /state
USER uib
ENV UIB_HOME=/state
VOLUME /state
ENTRYPOINT ["uib"]
CMD ["serve"]
