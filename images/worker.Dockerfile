# The Prefect worker image for the docker and Kubernetes work pools: Prefect's own image with
# prefect-docker and prefect-kubernetes installed at build time (not at every start, as
# EXTRA_PIP_PACKAGES would). The tag names the Prefect version; prefect.yaml
# (definitions.work_pools) and the files that start workers (infra/docker-compose.yml,
# infra/k8s/worker.yaml) use it.
#
#   docker build --network host -f images/worker.Dockerfile -t visionflows-worker:3.9.1 images
#
# Flow runs do not run here: the docker worker starts them in containers of the task image,
# the Kubernetes worker in Jobs (infra/k8s/base-job-template.json).
ARG PREFECT_VERSION=3.9.1
FROM prefecthq/prefect:${PREFECT_VERSION}-python3.11

ARG PREFECT_VERSION
ARG PREFECT_DOCKER_VERSION=0.7.4
ARG PREFECT_KUBERNETES_VERSION=0.8.0
# prefect pinned: the integrations must not move the image's own Prefect
RUN python -m pip install --no-cache-dir "prefect==${PREFECT_VERSION}" \
        "prefect-docker==${PREFECT_DOCKER_VERSION}" \
        "prefect-kubernetes==${PREFECT_KUBERNETES_VERSION}" \
 && python -c "import prefect, prefect_docker, prefect_kubernetes; print('prefect', prefect.__version__)"

ENV DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
