#!/bin/sh
# The bucket, a policy limited to it and the tasks' own access key on MinIO. Run by the
# one-shot `minio-init` of infra/docker-compose.yml and by the Kubernetes Job minio-init
# (infra/k8s/minio/minio-init.yaml), in the minio/mc image. Idempotent.
#
# Environment: MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, VF_TASKS_ACCESS_KEY,
# VF_TASKS_SECRET_KEY, and VF_BUCKET or VF_STORE (s3://BUCKET/PREFIX); MINIO_URL
# (default http://127.0.0.1:9000), POLICY_FILE (default /etc/visionflows/tasks-policy.json).
#
# Exit code 2, before anything is changed: a secret is missing, is still an example value
# of infra/.env.example (or MinIO's own minioadmin), or is shorter than 12 characters.
set -eu

MINIO_URL=${MINIO_URL:-http://127.0.0.1:9000}
POLICY_FILE=${POLICY_FILE:-/etc/visionflows/tasks-policy.json}
WAIT_S=${MINIO_WAIT_S:-300}

refuse() {
  echo "minio-init: $1" >&2
  exit 2
}

check_secret() {  # NAME VALUE
  [ -n "$2" ] || refuse "$1 is not set (infra/.env)"
  case "$(printf '%s' "$2" | tr '[:upper:]' '[:lower:]')" in
    *change-me*|*minioadmin*) refuse "$1 is still the example value: set a secret of your own in infra/.env" ;;
  esac
  [ "${#2}" -ge 12 ] || refuse "$1 is shorter than 12 characters"
}

check_secret MINIO_ROOT_PASSWORD "${MINIO_ROOT_PASSWORD:-}"
check_secret VF_TASKS_SECRET_KEY "${VF_TASKS_SECRET_KEY:-}"
[ -n "${MINIO_ROOT_USER:-}" ] || refuse "MINIO_ROOT_USER is not set"
[ -n "${VF_TASKS_ACCESS_KEY:-}" ] || refuse "VF_TASKS_ACCESS_KEY is not set"
[ "$VF_TASKS_ACCESS_KEY" != "$MINIO_ROOT_USER" ] \
  || refuse "VF_TASKS_ACCESS_KEY must differ from MINIO_ROOT_USER (the tasks get their own key)"
[ "$VF_TASKS_SECRET_KEY" != "$MINIO_ROOT_PASSWORD" ] \
  || refuse "VF_TASKS_SECRET_KEY must differ from MINIO_ROOT_PASSWORD"
if [ -z "${VF_BUCKET:-}" ]; then
  case "${VF_STORE:-}" in
    s3://?*) bucket=${VF_STORE#s3://}; VF_BUCKET=${bucket%%/*} ;;
    *) refuse "set VF_BUCKET, or VF_STORE=s3://BUCKET/PREFIX" ;;
  esac
fi
[ -r "$POLICY_FILE" ] || refuse "policy file $POLICY_FILE is missing"

# MinIO may still be starting (Kubernetes starts this Job beside it).
waited=0
until mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1 \
    && mc ready local >/dev/null 2>&1; do
  [ "$waited" -lt "$WAIT_S" ] || { echo "minio-init: MinIO at $MINIO_URL not ready after ${WAIT_S}s" >&2; exit 1; }
  sleep 2
  waited=$((waited + 2))
done

mc mb --ignore-existing "local/$VF_BUCKET"
policy="${TMPDIR:-/tmp}/tasks-policy.json"
sed "s/BUCKET/$VF_BUCKET/g" "$POLICY_FILE" > "$policy"
mc admin policy create local visionflows-tasks "$policy" \
  || mc admin policy info local visionflows-tasks >/dev/null
mc admin user add local "$VF_TASKS_ACCESS_KEY" "$VF_TASKS_SECRET_KEY"
mc admin policy attach local visionflows-tasks --user "$VF_TASKS_ACCESS_KEY" 2>/dev/null \
  || echo "policy visionflows-tasks already attached"
echo "bucket $VF_BUCKET and key $VF_TASKS_ACCESS_KEY ready"
