#!/usr/bin/env bash
# visionflows on Kubernetes, from an empty namespace to deployed flows (README "Kubernetes"):
# the Secrets and ConfigMaps from infra/.env, MinIO with its bucket and the tasks' key, the
# Prefect server, the worker of pool visionflows-k8s, then the pool (with
# infra/k8s/base-job-template.json) and the nightly-k8s deployments, through a port-forward
# to the in-cluster Prefect server.
#
#   cp infra/.env.example infra/.env      # change every password in it
#   infra/k8s/deploy.sh
#
# Settings (environment):
#   VF_ENV_FILE        the settings file (default infra/.env)
#   VF_K8S_MINIO       1 (default): run MinIO in the cluster; 0: use an existing S3/MinIO,
#                      given by VF_STORE (s3://bucket/prefix) and VF_K8S_S3_ENDPOINT_URL (empty
#                      for AWS S3) with the tasks' key VF_TASKS_ACCESS_KEY / VF_TASKS_SECRET_KEY
#   VF_WORKER_IMAGE    the worker image as your cluster pulls it (default visionflows-worker:3.9.1)
#   VF_K8S_PREFECT_PORT  local port of the port-forward (default 4200)
#   KUBECTL            the kubectl command (default kubectl; its current context is used)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ENV_FILE=${VF_ENV_FILE:-$ROOT/infra/.env}
EXAMPLE=$ROOT/infra/.env.example
KUBECTL=${KUBECTL:-kubectl}
NS=visionflows
MINIO=${VF_K8S_MINIO:-1}

die() { echo "deploy.sh: $*" >&2; exit 2; }

[ -f "$ENV_FILE" ] || die "no $ENV_FILE: cp infra/.env.example infra/.env, then change every password in it"
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a

need=(VF_TASKS_ACCESS_KEY VF_TASKS_SECRET_KEY)
secrets=(VF_TASKS_SECRET_KEY)
if [ "$MINIO" = 1 ]; then
  need+=(MINIO_ROOT_USER MINIO_ROOT_PASSWORD VF_BUCKET)
  secrets+=(MINIO_ROOT_PASSWORD)
else
  need+=(VF_STORE)
fi
for name in "${need[@]}"; do
  [ -n "${!name:-}" ] || die "$name is not set in $ENV_FILE"
done
# The example passwords are public: refuse them (and every change-me placeholder).
for name in "${secrets[@]}"; do
  value=${!name}
  if [[ "$value" == change-me* ]] || grep -qxF -- "$name=$value" "$EXAMPLE"; then
    die "$name in $ENV_FILE is the example value from infra/.env.example; set your own"
  fi
done

if [ "$MINIO" = 1 ]; then
  STORE=s3://$VF_BUCKET/vf
  ENDPOINT=http://minio.$NS.svc:9000
  BUCKET=$VF_BUCKET
else
  STORE=$VF_STORE
  ENDPOINT=${VF_K8S_S3_ENDPOINT_URL:-}
  BUCKET=${STORE#s3://}; BUCKET=${BUCKET%%/*}
fi
[[ "$STORE" == s3://* ]] || die "the cluster needs an s3:// store (got $STORE): pods share no folder"

# Secret values go through a file only this user can read, never on a command line.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
chmod 700 "$TMP"
apply_generated() {  # kind name --from-... : create-or-update without kubectl create's conflict
  "$KUBECTL" -n "$NS" create "$@" --dry-run=client -o yaml | "$KUBECTL" apply -f -
}

echo "deploy.sh: namespace, Secrets and ConfigMaps"
"$KUBECTL" apply -f "$HERE/namespace.yaml"
printf 'access-key=%s\nsecret-key=%s\n' "$VF_TASKS_ACCESS_KEY" "$VF_TASKS_SECRET_KEY" > "$TMP/store"
apply_generated secret generic visionflows-store-credentials --from-env-file="$TMP/store"
printf 'VF_STORE=%s\nVF_S3_ENDPOINT_URL=%s\nVF_BUCKET=%s\nAWS_DEFAULT_REGION=%s\n' \
  "$STORE" "$ENDPOINT" "$BUCKET" "${AWS_DEFAULT_REGION:-us-east-1}" > "$TMP/config"
apply_generated configmap visionflows-store --from-env-file="$TMP/config"

files=("$HERE/prefect-server.yaml" "$HERE/flow-runs.yaml")
if [ "$MINIO" = 1 ]; then
  printf 'root-user=%s\nroot-password=%s\n' "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" > "$TMP/root"
  apply_generated secret generic visionflows-minio-root --from-env-file="$TMP/root"
  apply_generated configmap visionflows-tasks-policy \
    --from-file=tasks-policy.json="$ROOT/infra/minio/tasks-policy.json"
  "$KUBECTL" -n "$NS" delete job minio-init --ignore-not-found  # a Job's template is immutable
  files+=("$HERE/minio.yaml" "$HERE/minio-init.yaml")
fi

echo "deploy.sh: MinIO, the Prefect server and the worker"
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done
"$KUBECTL" apply "${args[@]}"
sed "s|image: visionflows-worker:3.9.1 |image: ${VF_WORKER_IMAGE:-visionflows-worker:3.9.1} |" \
  "$HERE/worker.yaml" | "$KUBECTL" apply -f -

if [ "$MINIO" = 1 ]; then
  "$KUBECTL" -n "$NS" rollout status statefulset/minio --timeout=600s
  "$KUBECTL" -n "$NS" wait --for=condition=complete job/minio-init --timeout=600s
fi
"$KUBECTL" -n "$NS" rollout status deployment/prefect-server --timeout=600s

echo "deploy.sh: the work pool and the nightly-k8s deployments"
PORT=${VF_K8S_PREFECT_PORT:-4200}
"$KUBECTL" -n "$NS" port-forward svc/prefect-server "$PORT:4200" >"$TMP/port-forward.log" 2>&1 &
PF=$!
trap 'kill "$PF" 2>/dev/null || true; rm -rf "$TMP"' EXIT
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
ok=0
for _ in $(seq 60); do
  if python3 -c "import urllib.request as u; u.urlopen('$PREFECT_API_URL/health', timeout=2)" 2>/dev/null; then
    ok=1; break
  fi
  kill -0 "$PF" 2>/dev/null || break
  sleep 1
done
[ "$ok" = 1 ] || die "the Prefect server is not reachable through the port-forward: $(cat "$TMP/port-forward.log")"
"$ROOT/infra/setup-work-pools.sh" kubernetes
"$KUBECTL" -n "$NS" rollout status deployment/prefect-worker --timeout=600s

cat <<EOF
deploy.sh: done. With a port-forward to the Prefect server running
  (kubectl -n $NS port-forward svc/prefect-server 4200:4200), start a run and watch it:
  PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run q4-yolo/nightly-k8s --watch
EOF
