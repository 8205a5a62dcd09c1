# The task image: the project installed as a wheel on top of a base that has Python (and,
# ideally, torch already). One image serves every task family (torch and ultralytics tasks)
# and Prefect flow-run containers; see images/README.md for why one image and not two.
#
#   docker build -f images/tasks.Dockerfile --build-arg VF_VERSION=0.1.0 -t IMAGE .
#
# BASE_IMAGE: an official PyTorch CUDA runtime image by default; images/build-local-base.sh
# passes a locally built Debian base instead (no registry needed).
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG VF_VERSION=0.1.0
ARG VF_SOURCE_HASH=unknown
ARG VF_GIT_COMMIT=unknown
ARG VF_IMAGE_TAG=unknown
# Extra pip arguments, e.g. "--no-index --find-links http://127.0.0.1:8765/" for offline builds.
ARG VF_PIP_ARGS=""
# The Ray-ready variant (images/build-local-base.sh with VF_RAY_IMAGE=1): VF_EXTRAS="[ray]"
# and VF_EXTRA_PINS the extra's packages at the versions the tests ran with, e.g.
# "ray[default]==2.60.0 prefect-ray==0.6.0". One image then serves the Ray head, the Ray
# workers and the Prefect flow-run pods (docs/ray.md).
ARG VF_EXTRAS=""
ARG VF_EXTRA_PINS=""

USER root
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# OpenCV (ultralytics) needs libGL and GLib; official PyTorch images lack them. A Ray image
# also needs wget: KubeRay's probes call it in the Ray container.
RUN need=""; \
    if ! ldconfig -p | grep -q 'libGL.so.1 ' || ! ldconfig -p | grep -q 'libgthread-2.0.so.0 '; \
    then need="libgl1 libglib2.0-0"; fi; \
    if [ -n "${VF_EXTRAS}" ] && ! command -v wget >/dev/null; then need="$need wget"; fi; \
    if [ -n "$need" ]; then apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need \
      && rm -rf /var/lib/apt/lists/*; \
    fi

COPY dist/visionflows-${VF_VERSION}-py3-none-any.whl /tmp/vf/
# Keep the base image's torch: pip may add what is missing but never swaps the CUDA build.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch').split('+')[0])" \
        > /tmp/vf/keep-torch.txt 2>/dev/null || : > /tmp/vf/keep-torch.txt; \
    python -m pip install ${VF_PIP_ARGS} -c /tmp/vf/keep-torch.txt \
        "/tmp/vf/visionflows-${VF_VERSION}-py3-none-any.whl${VF_EXTRAS}" ${VF_EXTRA_PINS} \
 && rm -rf /tmp/vf \
 && python -c "import tasks.core.runtime, flows.launchers, torch; print('visionflows ok, torch', torch.__version__)" \
 && if [ -n "${VF_EXTRAS}" ]; then python -c "import ray, prefect_ray, flows.submit; print('ray', ray.__version__)" \
      && command -v ray >/dev/null; fi

# A non-root user with a fixed uid (1000 when free) for the task processes.
RUN if ! id -u vf >/dev/null 2>&1; then \
      useradd --create-home --uid 1000 --shell /bin/bash vf 2>/dev/null \
      || useradd --create-home --shell /bin/bash vf; \
    fi

ENV VF_IMAGE_TAG=${VF_IMAGE_TAG} \
    VF_GIT_COMMIT=${VF_GIT_COMMIT} \
    MPLCONFIGDIR=/tmp/matplotlib \
    YOLO_CONFIG_DIR=/tmp/ultralytics
LABEL org.opencontainers.image.title="visionflows-tasks${VF_EXTRAS}" \
      org.opencontainers.image.version="${VF_VERSION}" \
      org.opencontainers.image.revision="${VF_GIT_COMMIT}" \
      org.visionflows.source-hash="${VF_SOURCE_HASH}"

USER vf
WORKDIR /home/vf
# -P: never import from the working directory (a mounted tasks/ or reports/ folder)
ENTRYPOINT ["python", "-P", "-m", "tasks"]
CMD ["--help"]
