# Local base image for sites without a registry: a debootstrapped Debian (imported with
# `docker import` by images/build-local-base.sh), Python 3.11 in a venv, and every dependency
# of the project installed from a local wheelhouse. Task images are built FROM this base;
# the project code itself is installed there, so code changes never rebuild these layers.
#
# Built with the legacy builder and host networking: the wheelhouse is served on
# http://127.0.0.1:PORT/ by the build script, so no wheel is ever copied into a layer.
#
# Two stages: `python` (the interpreter; the build script runs `pip download` in it to fill
# the wheelhouse with what this exact Python needs, e.g. marker-dependent backports) and
# `deps` (everything installed), the final base.
ARG ROOTFS_IMAGE
FROM ${ROOTFS_IMAGE} AS python

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# libgl1 + libglib2.0-0: OpenCV (ultralytics) needs them even headless.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && python3 -m venv /opt/venv

FROM python AS deps
# e.g. "--no-index --find-links http://127.0.0.1:8765/" (set by the build script)
ARG VF_PIP_ARGS=""
COPY requirements.txt constraints.txt /opt/venv/visionflows/
RUN pip install ${VF_PIP_ARGS} -r /opt/venv/visionflows/requirements.txt \
        -c /opt/venv/visionflows/constraints.txt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && python -c "import torch, torchvision, prefect, boto3; print('torch', torch.__version__)"
