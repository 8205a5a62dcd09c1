#!/usr/bin/env bash
# Build the task image without any registry: debootstrap a minimal Debian, `docker import`
# it, install Python and every dependency wheel into a base image, then build the task image
# (images/build.sh) on that base. Run as root on a machine with a Docker engine, e.g.:
#
#   apt-get install -y docker.io debootstrap
#   dockerd --bridge=none --iptables=false >/var/log/dockerd.log 2>&1 &
#   images/build-local-base.sh
#
# Everything is cached: the rootfs image (per suite, mirror and CA certificates), the
# wheelhouse (per requirements and constraints), the base image (per rootfs, requirements,
# constraints and Dockerfile) and the task image (per version and code). A rerun with no
# change takes seconds; a code change rebuilds only the thin task layer.
#
# Settings (environment):
#   VF_IMAGE_CACHE     cache folder (default /var/cache/visionflows-images)
#   VF_DEBIAN_SUITE    default bookworm (its Python 3.11 matches the project's cp311 wheels)
#   VF_DEBIAN_MIRROR   default http://deb.debian.org/debian
#   VF_WHEELHOUSE      a ready folder of wheels for the image's Python: no download at all
#                      (air-gapped sites); default: $VF_IMAGE_CACHE/wheelhouse, filled by
#                      `pip download` on the host, then completed inside the image's Python
#   VF_CONSTRAINTS     a constraints file; default: `pip freeze` of $PYTHON, so the image has
#                      exactly the versions the tests ran with (torch's CUDA build included)
#   PYTHON             the host Python (default python3) used for pip download and the wheel
#   VF_RAY_IMAGE=1     also build the Ray-ready variant visionflows-tasks-ray: the same base
#                      and pins plus the project's [ray] extra (ray[default], prefect-ray at
#                      their versions in the constraints), for KubeRay (infra/k8s/ray/)
#
# Host CA certificates (/usr/local/share/ca-certificates/*.crt) go into the rootfs so apt and
# pip inside the images trust a site's TLS proxy. The wheelhouse is served to the builds on
# http://127.0.0.1:PORT/ (host networking), so wheels never land in an image layer.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
SUITE=${VF_DEBIAN_SUITE:-bookworm}
MIRROR=${VF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${VF_IMAGE_CACHE:-/var/cache/visionflows-images}
export DOCKER_BUILDKIT=0
T0=$SECONDS

log() { echo "build-local-base: $*" >&2; }
die() { log "error: $*"; exit 1; }
sha() { sha256sum | cut -c1-12; }
step() { log "$1 done in $(($SECONDS - $2))s"; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
command -v docker >/dev/null || die "no docker CLI: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable: start it, e.g.
  dockerd --bridge=none --iptables=false >/var/log/dockerd.log 2>&1 &"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"
mkdir -p "$CACHE"

# 1. rootfs: debootstrap --variant=minbase + host CA certificates, imported as an image.
CERTS=$(ls /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)
CERT_HASH=$( { echo "$SUITE $MIRROR v1"; for c in $CERTS; do cat "$c"; done; } | sha)
ROOTFS_IMAGE="visionflows-rootfs:$SUITE-$CERT_HASH"
t=$SECONDS
if docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
  log "rootfs $ROOTFS_IMAGE exists"
else
  command -v debootstrap >/dev/null || die "no debootstrap: apt-get install -y debootstrap"
  DIR=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$DIR"' EXIT
  log "debootstrap $SUITE from $MIRROR (minbase)"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$DIR" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
  if [ -n "$CERTS" ]; then
    cp $CERTS "$DIR/usr/local/share/ca-certificates/"
    chroot "$DIR" update-ca-certificates >/dev/null
  fi
  chroot "$DIR" apt-get clean
  rm -rf "$DIR"/var/lib/apt/lists/* "$DIR"/var/cache/apt/*.bin
  tar -C "$DIR" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$DIR"
  trap - EXIT
  step "rootfs $ROOTFS_IMAGE" "$t"
fi

# 2. the project wheel, its requirements, and the constraints that pin them.
t=$SECONDS
VERSION=$("$PYTHON" -m flows.launchers.images version)
WHEEL="dist/visionflows-$VERSION-py3-none-any.whl"
rm -rf "$WHEEL" build/lib build/bdist.*
"$PYTHON" -m pip wheel --no-deps --no-build-isolation -q -w dist . 2>/dev/null \
  || "$PYTHON" -m pip wheel --no-deps -q -w dist .
CTX="$CACHE/base-context"
mkdir -p "$CTX"
"$PYTHON" - "$WHEEL" >"$CTX/requirements.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    for line in zf.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(line.split(":", 1)[1].strip())
PY
# the [ray] extra's requirements (wheelhouse only: the base image stays the same)
: >"$CTX/ray-requirements.txt"
if [ "${VF_RAY_IMAGE:-0}" = 1 ]; then
  "$PYTHON" - "$WHEEL" >"$CTX/ray-requirements.txt" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    for line in zf.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and re.search(r"extra == .ray.", line):
            print(line.split(":", 1)[1].split(";")[0].strip())
PY
  [ -s "$CTX/ray-requirements.txt" ] || die "the wheel has no [ray] extra"
fi
if [ -n "${VF_CONSTRAINTS:-}" ]; then
  cp "$VF_CONSTRAINTS" "$CTX/constraints.txt"
else
  "$PYTHON" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -v -E '^(#|-e )| @ |^visionflows==' >"$CTX/constraints.txt" || true
fi
step "wheel and requirements ($(wc -l <"$CTX/requirements.txt") requirements)" "$t"

# 3. the wheelhouse: every dependency as a wheel, downloaded once with the host's pip config
#    (its mirrors, proxies and find-links): the gigabytes come from wherever the host has them.
t=$SECONDS
OFFLINE=""
if [ -n "${VF_WHEELHOUSE:-}" ]; then
  WH=$(cd "$VF_WHEELHOUSE" 2>/dev/null && pwd) || die "VF_WHEELHOUSE=$VF_WHEELHOUSE is not a folder"
  OFFLINE="--no-index"
else
  WH="$CACHE/wheelhouse"
  STAMP=$(cat "$CTX/requirements.txt" "$CTX/ray-requirements.txt" "$CTX/constraints.txt" | sha)
  if [ "$(cat "$WH/.stamp-host" 2>/dev/null)" != "$STAMP" ]; then
    mkdir -p "$WH"
    log "pip download into $WH (first run: gigabytes for torch's CUDA build)"
    "$PYTHON" -m pip download -q -d "$WH" -r "$CTX/requirements.txt" \
      -r "$CTX/ray-requirements.txt" -c "$CTX/constraints.txt" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
      || die "pip download failed: fix the host's pip access or set VF_WHEELHOUSE"
    echo "$STAMP" >"$WH/.stamp-host"
  fi
fi
step "host wheelhouse $WH ($(du -sh "$WH" | cut -f1))" "$t"

# 4. the interpreter stage, then complete the wheelhouse for *that* Python (markers such as
#    python_full_version differ from the host's): pip download inside it, reusing what is there.
t=$SECONDS
PY_IMAGE="visionflows-python:$SUITE-$( { docker image inspect -f '{{.Id}}' "$ROOTFS_IMAGE"; \
  cat images/base.Dockerfile; } | sha)"
docker build --force-rm --network host -f images/base.Dockerfile --target python -t "$PY_IMAGE" \
  --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" "$CTX" >"$CACHE/python-build.log" 2>&1 \
  || { tail -30 "$CACHE/python-build.log" >&2; die "python stage failed; see $CACHE/python-build.log"; }
TARGET=$(cat "$CTX/requirements.txt" "$CTX/ray-requirements.txt" "$CTX/constraints.txt" <(docker image inspect -f '{{.Id}}' "$PY_IMAGE") | sha)
if [ "$(cat "$WH/.stamp-target" 2>/dev/null)" != "$TARGET" ]; then
  docker run --rm --network host -v "$WH:/wheelhouse" -v "$CTX:/ctx:ro" "$PY_IMAGE" \
    pip download -q $OFFLINE -d /wheelhouse --find-links /wheelhouse \
      -r /ctx/requirements.txt -r /ctx/ray-requirements.txt -c /ctx/constraints.txt \
    || die "the wheelhouse lacks wheels for the image's Python (see above)"
  echo "$TARGET" >"$WH/.stamp-target"
fi
step "python stage $PY_IMAGE ($(docker run --rm "$PY_IMAGE" python --version)) and wheelhouse" "$t"

# 5. serve the wheelhouse on 127.0.0.1 for the builds (host networking).
PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WH" "$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" \
    2>/dev/null && break
  sleep 0.2
done
PIP_ARGS="--no-index --find-links http://127.0.0.1:$PORT/"

# 6. the base image: Python + every dependency (not the project: code changes stay cheap).
t=$SECONDS
BASE_HASH=$( { docker image inspect -f '{{.Id}}' "$PY_IMAGE"; cat images/base.Dockerfile \
  "$CTX/requirements.txt" "$CTX/constraints.txt"; } | sha)
BASE_IMAGE="visionflows-base:$VERSION-$BASE_HASH"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base $BASE_IMAGE exists"
else
  log "building $BASE_IMAGE"
  docker build --force-rm --network host -f images/base.Dockerfile -t "$BASE_IMAGE" \
    --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" --build-arg "VF_PIP_ARGS=$PIP_ARGS" \
    "$CTX" >"$CACHE/base-build.log" 2>&1 \
    || { tail -30 "$CACHE/base-build.log" >&2; die "base build failed; see $CACHE/base-build.log"; }
  step "base $BASE_IMAGE" "$t"
fi

# 7. the task image on that base (it rebuilds the wheel and names the image after it).
t=$SECONDS
IMAGE=$(BASE_IMAGE="$BASE_IMAGE" VF_PIP_ARGS="$PIP_ARGS" PYTHON="$PYTHON" \
  "$ROOT/images/build.sh" | tail -1)
step "task image $IMAGE" "$t"
if [ "${VF_RAY_IMAGE:-0}" = 1 ]; then
  # the same base and pins, plus the [ray] extra at the constraints' versions
  t=$SECONDS
  PINS=$("$PYTHON" - "$CTX/ray-requirements.txt" "$CTX/constraints.txt" <<'PY'
import re, sys
pinned = {}
for line in open(sys.argv[2]):
    name, sep, version = line.strip().partition("==")
    if sep:
        pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
out = []
for req in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?", req.strip())
    key = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    if key not in pinned:
        sys.exit(f"build-local-base: error: {m.group(1)} (the [ray] extra) is not in the "
                 "constraints: install it on the host first (pip install -e '.[ray]')")
    out.append(f"{m.group(1)}{m.group(2) or ''}=={pinned[key]}")
print(" ".join(out))
PY
) || die "no pins for the [ray] extra"
  RAY_IMAGE=$(BASE_IMAGE="$BASE_IMAGE" VF_PIP_ARGS="$PIP_ARGS" PYTHON="$PYTHON" VF_EXTRAS=ray \
    VF_EXTRA_PINS="$PINS" "$ROOT/images/build.sh" | tail -1)
  step "Ray image $RAY_IMAGE ($PINS)" "$t"
fi

size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }
log "rootfs $(size "$ROOTFS_IMAGE"), base $(size "$BASE_IMAGE"), task image $(size "$IMAGE")${RAY_IMAGE:+, Ray image $(size "$RAY_IMAGE")}"
log "total $((SECONDS - T0))s"
echo "$IMAGE"
