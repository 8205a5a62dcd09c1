#!/usr/bin/env bash
# Create the work pools of infra/work-pools.yaml (each with its type and base job template),
# the store's Secret block for the docker pool, then deploy every flow (prefect.yaml).
#   PREFECT_API_URL=http://127.0.0.1:4200/api infra/setup-work-pools.sh
# Reads infra/.env (VF_BUCKET, VF_TASKS_ACCESS_KEY, VF_TASKS_SECRET_KEY) when it exists.
# A pool that exists with another type is an error, with the command that fixes it.
# Workers: visionflows-process `prefect worker start --pool visionflows-process` here;
# visionflows-docker the compose stack's prefect-worker; visionflows-k8s infra/k8s/deploy.sh.
set -euo pipefail
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
export VF_PROJECT_DIR="${VF_PROJECT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$VF_PROJECT_DIR"
PYTHON=${PYTHON:-python3}
if [ -f infra/.env ]; then set -a; . infra/.env; set +a; fi

# the compose stack's server secrets (where set): example or short values are refused
"$PYTHON" -m flows.work_pools check-server-secrets
"$PYTHON" -m flows.work_pools create
# flow runs of the docker pool read the store settings from this block at run time
if [ -n "${VF_TASKS_SECRET_KEY:-}" ]; then
  "$PYTHON" -m flows.work_pools store-block
else
  echo "note: VF_TASKS_SECRET_KEY unset: no store Secret block (the docker pool needs it)" >&2
fi
"$PYTHON" -m prefect --no-prompt deploy --all
echo "start a worker with: prefect worker start --pool visionflows-process"
