#!/usr/bin/env bash
# From an empty cluster (with the NVIDIA device plugin) to the work pool visionflows-k8s and
# its deployments: namespace visionflows, MinIO with the bucket and the tasks' key, the
# Prefect server, the worker; then the pool (infra/k8s/base-job-template.json) and
# `prefect deploy --name nightly-k8s`, through a port-forward to the in-cluster server.
#
#   cp infra/.env.example infra/.env       # change every secret
#   VF_REGISTRY=registry.example.com/vf infra/k8s/deploy.sh
#
# Environment (or infra/.env):
#   VF_REGISTRY         registry the cluster pulls visionflows-worker and visionflows-tasks
#                       from (push them first: README "Kubernetes"); unset: the node's images
#   VF_K8S_MINIO=0      no in-cluster MinIO: use the existing store VF_STORE=s3://BUCKET/PREFIX
#                       (+ VF_S3_ENDPOINT_URL unless AWS) with VF_TASKS_ACCESS_KEY/SECRET_KEY
#   VF_K8S_POSTGRES=0   no in-cluster PostgreSQL: the server uses PREFECT_DB_HOST (+ PREFECT_DB_PORT,
#                       PREFECT_DB_USER, PREFECT_DB_NAME) with PREFECT_DB_PASSWORD
#   PREFECT_AUTH_STRING the API's basic auth, user:password (infra/.env)
#   VF_K8S_RENDER=1     print the manifests (Secrets included) instead of applying them
#   VF_K8S_API_PORT     local port of the port-forward to the Prefect server (4200)
#   KUBECTL, PYTHON     commands (kubectl, python3)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export VF_PROJECT_DIR=$ROOT
KUBECTL=${KUBECTL:-kubectl}
PYTHON=${PYTHON:-python3}
if [ -f infra/.env ]; then set -a; . infra/.env; set +a; fi
NS=$("$PYTHON" -m flows.work_pools get visionflows-k8s namespace)
POOL=$("$PYTHON" -m flows.work_pools get visionflows-k8s name)
DEPLOYMENT=$("$PYTHON" -m flows.work_pools get visionflows-k8s deployment)
if [ -n "${VF_REGISTRY:-}" ]; then
  export VF_IMAGE_REPOSITORY=${VF_IMAGE_REPOSITORY:-${VF_REGISTRY%/}/visionflows-tasks}
fi

overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
"$PYTHON" -m flows.k8s overlay "$overlay"   # refuses example or short secrets
if [ "${VF_K8S_RENDER:-0}" = 1 ]; then
  "$KUBECTL" kustomize "$overlay"
  exit 0
fi

# A Job's pod template cannot change: the bucket Job is recreated on every deploy.
"$KUBECTL" -n "$NS" delete job minio-init --ignore-not-found >/dev/null 2>&1 || true
"$KUBECTL" apply -k "$overlay"
if [ "${VF_K8S_MINIO:-1}" != 0 ]; then
  "$KUBECTL" -n "$NS" rollout status statefulset/minio --timeout=10m
  "$KUBECTL" -n "$NS" wait --for=condition=complete job/minio-init --timeout=10m
fi
if [ "${VF_K8S_POSTGRES:-1}" != 0 ]; then
  "$KUBECTL" -n "$NS" rollout status statefulset/postgres --timeout=10m
fi
"$KUBECTL" -n "$NS" rollout status deployment/prefect-server --timeout=10m

port=${VF_K8S_API_PORT:-4200}
"$KUBECTL" -n "$NS" port-forward svc/prefect-server "$port:4200" >/dev/null &
forward=$!
trap 'kill "$forward" 2>/dev/null || true; rm -rf "$overlay"' EXIT
export PREFECT_API_URL="http://127.0.0.1:$port/api" PREFECT_API_AUTH_STRING="$PREFECT_AUTH_STRING"
for _ in $(seq 60); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$PREFECT_API_URL/health')" \
    2>/dev/null && break
  sleep 1
done
"$PYTHON" -m flows.work_pools create --pool "$POOL"
"$PYTHON" -m prefect --no-prompt deploy --name "$DEPLOYMENT"
"$KUBECTL" -n "$NS" rollout status deployment/prefect-worker --timeout=10m
echo "ready: with a port-forward to svc/prefect-server (PREFECT_API_URL=$PREFECT_API_URL):"
echo "  prefect deployment run q4-yolo/$DEPLOYMENT"
