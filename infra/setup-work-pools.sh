#!/usr/bin/env bash
# Create the work pools prefect.yaml names, then deploy every flow and start a worker.
#   PREFECT_API_URL=http://127.0.0.1:4200/api VF_PROJECT_DIR=$PWD infra/setup-work-pools.sh
# Both pools are process pools: on `visionflows-docker` the flow runs in the worker's process
# and starts one container per task (the docker launcher), so its host needs a Docker engine.
set -euo pipefail
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
export VF_PROJECT_DIR="${VF_PROJECT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
for pool in visionflows-process visionflows-docker; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
done
cd "$VF_PROJECT_DIR"
prefect --no-prompt deploy --all
echo "start a worker with: prefect worker start --pool visionflows-process"
