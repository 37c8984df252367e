#!/usr/bin/env bash
# The raddiag MLflow tracking server: runs and registry in a database, artifacts in S3, proxied
# through the server (--serve-artifacts) so that clients on any node need no S3 credentials — only
# the server's host needs write access to the artifact prefix.
#
#   MLFLOW_BACKEND_STORE_URI     database URI (default: sqlite on this host's disk; postgresql://... on RDS)
#   MLFLOW_ARTIFACTS_DESTINATION s3://bucket/prefix for artifacts (required)
#   MLFLOW_HOST / MLFLOW_PORT    bind address (default 0.0.0.0:5000)
#   MLFLOW_ALLOWED_HOSTS         Host headers the server accepts (default: this host's addresses)
#   MLFLOW_S3_ENDPOINT_URL       only for non-AWS S3 (MinIO, moto in tests)
#
# On the Ray head (ray_cluster.yaml) workers reach it at http://$RAY_HEAD_IP:5000.
set -euo pipefail
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$HOME/mlflow/mlflow.db}"
HOST="${MLFLOW_HOST:-0.0.0.0}"
PORT="${MLFLOW_PORT:-5000}"
if [[ "$BACKEND" == sqlite:///* ]]; then mkdir -p "$(dirname "${BACKEND#sqlite:///}")"; fi
ALLOWED="${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:$PORT,127.0.0.1,127.0.0.1:$PORT,$(hostname -I 2>/dev/null | tr ' ' '\n' | sed '/^$/d' | sed "s/\$/:$PORT/" | paste -sd, -)}"
exec mlflow server \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "$HOST" --port "$PORT" \
  --allowed-hosts "${ALLOWED%,}" \
  --workers "${MLFLOW_WORKERS:-2}"
