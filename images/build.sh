#!/usr/bin/env bash
# Build the task image on any base: visionflows-tasks:<version>-<source hash>.
#
#   images/build.sh                                  # FROM the default (official PyTorch CUDA) base
#   BASE_IMAGE=my/base:tag images/build.sh           # FROM another base
#   VF_PIP_ARGS="--no-index --find-links http://127.0.0.1:8765/" images/build.sh   # offline
#
# Also tags it <repository>:latest (the compose stack's process worker runs that one).
# Prints the image reference on the last line. Uses the legacy builder with host networking
# (no BuildKit/buildx needed); the build context holds only the project wheel (.dockerignore).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export DOCKER_BUILDKIT=0

VERSION=$("$PYTHON" -m flows.launchers.images version)
WHEEL="dist/visionflows-$VERSION-py3-none-any.whl"
# Build the wheel, then name the image after what the wheel really contains.
rm -rf "$WHEEL" build/lib build/bdist.*
"$PYTHON" -m pip wheel --no-deps --no-build-isolation -q -w dist . 2>/dev/null \
  || "$PYTHON" -m pip wheel --no-deps -q -w dist .
[ -f "$WHEEL" ] || { echo "build.sh: $WHEEL was not built" >&2; exit 1; }
TAG=$("$PYTHON" -m flows.launchers.images wheel-tag "$WHEEL")
HASH=${TAG#"$VERSION"-}
# VF_EXTRAS=ray (with VF_EXTRA_PINS): the Ray-ready variant, visionflows-tasks-ray
EXTRAS=${VF_EXTRAS:+[$VF_EXTRAS]}
REPO=${VF_IMAGE_REPOSITORY:-visionflows-tasks${VF_EXTRAS:+-$VF_EXTRAS}}
IMAGE="$REPO:$TAG"
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi

if [ -z "${VF_FORCE_BUILD:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build.sh: $IMAGE exists (same version and code); VF_FORCE_BUILD=1 rebuilds it" >&2
  docker tag "$IMAGE" "$REPO:latest"
  echo "$IMAGE"
  exit 0
fi

args=(--force-rm --network host -f images/tasks.Dockerfile -t "$IMAGE"
      --build-arg "VF_VERSION=$VERSION" --build-arg "VF_SOURCE_HASH=$HASH"
      --build-arg "VF_GIT_COMMIT=$COMMIT" --build-arg "VF_IMAGE_TAG=$IMAGE"
      --build-arg "VF_PIP_ARGS=${VF_PIP_ARGS:-}" --build-arg "VF_EXTRAS=$EXTRAS"
      --build-arg "VF_EXTRA_PINS=${VF_EXTRA_PINS:-}")
if [ -n "${BASE_IMAGE:-}" ]; then args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
start=$SECONDS
docker build "${args[@]}" . >&2
docker tag "$IMAGE" "$REPO:latest"
echo "build.sh: built $IMAGE in $((SECONDS - start))s" >&2
echo "$IMAGE"
