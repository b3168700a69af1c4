#!/usr/bin/env bash
# One MLflow tracking server for a team: runs and metrics in PostgreSQL, artifacts proxied
# through the server to ARTIFACTS (a folder, or s3://bucket/prefix, ...), so that clients need
# only the server's URL. Bound to 127.0.0.1 unless MLFLOW_HOST says otherwise (anything else
# exposes it unauthenticated: put a proxy with authentication in front).
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://USER:PASSWORD@HOST:5432/DB \
#     tools/mlflow-team-server.sh ARTIFACTS [PORT]
#
# The URI is read from the environment, never from the command line, so its password does not
# show in `ps`. The database must exist; MLflow creates its tables on first start.
set -euo pipefail

if [ $# -lt 1 ] || [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
  echo "usage: MLFLOW_BACKEND_STORE_URI=postgresql://... $0 ARTIFACTS [PORT]" >&2
  exit 2
fi
case "$MLFLOW_BACKEND_STORE_URI" in
  # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the project ships psycopg2 (the lock).
  postgresql://*) MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#*://}" ;;
  postgresql+psycopg2://*) ;;
  *) echo "$0: MLFLOW_BACKEND_STORE_URI must be postgresql://..., got ${MLFLOW_BACKEND_STORE_URI%%://*}://..." >&2
     exit 2 ;;
esac
export MLFLOW_BACKEND_STORE_URI

exec "${MLFLOW:-mlflow}" server \
  --artifacts-destination "$1" \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${2:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
