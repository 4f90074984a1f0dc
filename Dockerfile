# Container images for moderator (docs/container.md).
#
#   podman build --format docker --target cpu -t moderator:cpu .
#   podman build --format docker --target gpu -t moderator:gpu .
#
# `cpu` is the last stage, so a build without --target makes it. `--format docker` keeps the
# HEALTHCHECK (the OCI image format has no field for it). Weights are never part of an image:
# mount the checkpoint directory at /models and the policy directory at /policies.

# The base images. The GPU base must be Ubuntu 22.04 (or another Debian-family system whose
# archive has python3.11 and python3.11-venv).
ARG CPU_BASE=python:3.11-slim
ARG GPU_BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
# GPU: Python 3.11 from the base system's archive, shared by the GPU builder and the GPU image.
FROM ${GPU_BASE} AS gpu-python
ARG DEBIAN_FRONTEND=noninteractive
# --no-upgrade: packages the base already has (ca-certificates) stay as they are, so a CA bundle
# mounted over theirs for the build is never rewritten (that would fail the install).
# DL3008 (pin apt versions): the archive replaces package versions with security updates, so a
# pinned version stops installing; the base image tag is what fixes the system.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends --no-upgrade \
      python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ENV LANG=C.UTF-8

# ---------------------------------------------------------------------------------------------
# GPU builder: the package and its extras in a virtualenv at /opt/moderator. lmdeploy (TurboMind)
# comes with its full dependencies here: its CUDA build, torch<=2.12.1 and the nvidia-* wheels.
# It cannot sit beside the `transformers` extra (torch 2.13.0), so that extra is left out.
FROM gpu-python AS gpu-builder
ARG EXTRAS=lmdeploy,openai,postgres,api
ARG TORCH_INDEX_URL=
# pip's CA bundle inside the build, used when the file exists and is not empty
# (docs/container.md, "A CA bundle for the build").
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Dependencies first, against a stub package: this layer is reused while only the source changes.
COPY pyproject.toml README.md ./
RUN if [ ! -s "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && mkdir moderator && touch moderator/__init__.py \
 && python3.11 -m venv /opt/moderator \
 && /opt/moderator/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      ".[${EXTRAS}]" \
 && /opt/moderator/bin/pip uninstall -y moderator \
 && rm -rf moderator build ./*.egg-info
COPY moderator ./moderator
RUN if [ ! -s "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && /opt/moderator/bin/pip install --no-deps . \
 && rm -rf build ./*.egg-info

# ---------------------------------------------------------------------------------------------
# CPU builder: as above, on the CPU base. The default extras are every CPU engine (transformers,
# nudenet, openai), PostgreSQL and the audit API. `moderator demo` and `dev-stack` also need
# `devstack` (moto's S3 server, about 200 MB): add it to EXTRAS for an image that runs them.
# TORCH_INDEX_URL adds a package index for torch, e.g. https://download.pytorch.org/whl/cpu for
# the CPU-only build (PyPI's torch is the CUDA build).
FROM ${CPU_BASE} AS cpu-builder
ARG EXTRAS=transformers,nudenet,openai,postgres,api
ARG TORCH_INDEX_URL=
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
RUN if [ ! -s "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && mkdir moderator && touch moderator/__init__.py \
 && python -m venv /opt/moderator \
 && /opt/moderator/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      ".[${EXTRAS}]" \
 && /opt/moderator/bin/pip uninstall -y moderator \
 && rm -rf moderator build ./*.egg-info
COPY moderator ./moderator
RUN if [ ! -s "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && /opt/moderator/bin/pip install --no-deps . \
 && rm -rf build ./*.egg-info

# ---------------------------------------------------------------------------------------------
# GPU image: the virtualenv and nothing from the build.
FROM gpu-python AS gpu
RUN groupadd --gid 10001 moderator \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/moderator \
      --shell /usr/sbin/nologin moderator \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/moderator
COPY --from=gpu-builder /opt/moderator /opt/moderator
ENV PATH=/opt/moderator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODERATOR_ENGINE__KIND=lmdeploy \
    MODERATOR_ENGINE__MODEL=/models \
    MODERATOR_POLICIES__DIR=/policies
WORKDIR /var/lib/moderator
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MODERATOR_HTTP__PORT', '9400'), timeout=4)"]
ENTRYPOINT ["moderator"]
CMD ["run"]

# ---------------------------------------------------------------------------------------------
# CPU image (the default target): the virtualenv and nothing from the build.
FROM ${CPU_BASE} AS cpu
RUN groupadd --gid 10001 moderator \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/moderator \
      --shell /usr/sbin/nologin moderator \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/moderator
COPY --from=cpu-builder /opt/moderator /opt/moderator
ENV PATH=/opt/moderator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    MODERATOR_ENGINE__MODEL=/models \
    MODERATOR_POLICIES__DIR=/policies
WORKDIR /var/lib/moderator
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MODERATOR_HTTP__PORT', '9400'), timeout=4)"]
ENTRYPOINT ["moderator"]
CMD ["run"]
