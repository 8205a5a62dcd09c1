#!/usr/bin/env bash
# Create the work pools prefect.yaml defines (definitions.work_pools: name, type, base job
# template), then deploy their deployments.
#   PREFECT_API_URL=http://127.0.0.1:4200/api infra/setup-work-pools.sh             # every pool
#   PREFECT_API_URL=... infra/setup-work-pools.sh kubernetes                        # one pool
# Pools: process (visionflows-process: flows run in the worker's process), docker
# (visionflows-docker: each flow run in a container; its store settings come from the
# environment, e.g. `set -a; . infra/.env; set +a`: VF_STORE, VF_S3_ENDPOINT_URL,
# VF_TASKS_ACCESS_KEY, VF_TASKS_SECRET_KEY), kubernetes (visionflows-k8s: a Job per flow run,
# see infra/k8s/deploy.sh). An existing pool keeps its name and type and gets the template of
# this checkout; a pool of another type is an error that says how to fix it.
set -euo pipefail
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
export VF_PROJECT_DIR="${VF_PROJECT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$VF_PROJECT_DIR"
PYTHON=${PYTHON:-python3}
"$PYTHON" -m flows.pools apply "$@"
mapfile -t names < <("$PYTHON" -m flows.pools deployments "$@")
args=()
for n in "${names[@]}"; do args+=(--name "$n"); done
prefect --no-prompt deploy "${args[@]}"
echo "deployed: ${names[*]}"
echo "start a worker for each pool you use: prefect worker start --pool NAME (the names:"
echo "python -m flows.pools list; compose and infra/k8s start the docker and kubernetes ones)"
