# The Prefect worker image: the official Prefect image with the docker and kubernetes worker
# types built in, so a worker installs nothing when it starts (no EXTRA_PIP_PACKAGES). The
# compose stack's worker (pool visionflows-docker) and the Kubernetes worker (pool
# visionflows-k8s) run it; its tag is worker_image in infra/work-pools.yaml.
#
#   docker build --network host -f images/worker.Dockerfile -t visionflows-worker:3.9.1 .
#
# The build context needs no file (.dockerignore leaves only the project wheel in it).
ARG PREFECT_VERSION=3.9.1
ARG PYTHON_VERSION=3.11
FROM prefecthq/prefect:${PREFECT_VERSION}-python${PYTHON_VERSION}

ARG PREFECT_VERSION=3.9.1
ARG PREFECT_DOCKER_VERSION=0.7.4
ARG PREFECT_KUBERNETES_VERSION=0.8.0
# Extra pip arguments, e.g. "--index-url http://127.0.0.1:8765/simple" for a local mirror.
ARG VF_PIP_ARGS=""

USER root
# Prefect stays at the base image's version: the integrations may not move it.
RUN python -m pip install --no-cache-dir ${VF_PIP_ARGS} \
        "prefect==${PREFECT_VERSION}" \
        "prefect-docker==${PREFECT_DOCKER_VERSION}" \
        "prefect-kubernetes==${PREFECT_KUBERNETES_VERSION}" \
 && python -c "import prefect, prefect_docker, prefect_kubernetes; \
assert prefect.__version__ == '${PREFECT_VERSION}', prefect.__version__; print('worker ok')"

# A non-root user with a fixed uid for Kubernetes (runAsNonRoot needs a numeric user). The
# compose worker runs as root: it talks to the Docker socket.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin worker 2>/dev/null \
    || id -u 1000 >/dev/null
USER 1000
ENV HOME=/tmp
