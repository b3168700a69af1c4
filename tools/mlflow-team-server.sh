#!/usr/bin/env bash
# The team's MLflow tracking server, the one way to start it (`make team-server` runs this).
# MLflow's basic-auth app with deploy/mlflow-auth.ini: a shared server, so every request needs a
# user, and a user sees an experiment only once its owner grants it. Bound to 127.0.0.1: other
# machines reach it through a TLS proxy (docs/security.md). Artifacts are proxied through the
# server, so clients need only its URL.
#
#   MLFLOW_AUTH_ADMIN_PASSWORD=... MLFLOW_FLASK_SERVER_SECRET_KEY=... tools/mlflow-team-server.sh
#
# Everything comes from the environment, never the command line, so no secret shows in `ps`:
#   MLFLOW_AUTH_ADMIN_PASSWORD      the admin's password (12+ characters), read only when the
#                                   user store is first created
#   MLFLOW_FLASK_SERVER_SECRET_KEY  the key of the UI's CSRF protection
#   TEAM_STORE      runs and metrics: postgresql://USER@HOST:5432/DB (its password in PGPASSWORD
#                   or ~/.pgpass; MLflow creates its tables on first start) or sqlite:///PATH;
#                   default sqlite:///$TEAM_DIR/mlflow.db
#   TEAM_DIR        the server's folder: the user store (basic_auth.db), the default store and
#                   artifacts; default team-server/ in the repository (git-ignored)
#   TEAM_ARTIFACTS  where artifacts go: a folder or s3://bucket/prefix; default $TEAM_DIR/mlartifacts
#   TEAM_PORT (5000), TEAM_WORKERS (4), MLFLOW (the mlflow command; default mlflow on PATH)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fail() { echo "$0: $*" >&2; exit 2; }

[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] && [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] ||
  fail "set MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters) and MLFLOW_FLASK_SERVER_SECRET_KEY in the environment (docs/security.md)"

TEAM_DIR="${TEAM_DIR:-$repo/team-server}"
mkdir -p "$TEAM_DIR"
TEAM_DIR="$(cd "$TEAM_DIR" && pwd)"  # absolute: the server runs inside it
store="${TEAM_STORE:-sqlite:///$TEAM_DIR/mlflow.db}"
case "$store" in
  # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the project ships psycopg2 (the lock).
  postgresql://*) store="postgresql+psycopg2://${store#*://}" ;;
  postgresql+psycopg2://* | sqlite:///*) ;;
  *) fail "TEAM_STORE must be postgresql://... or sqlite:///..., got ${store%%://*}://..." ;;
esac
# mlflow server reads its store from here when --backend-store-uri is not given
export MLFLOW_BACKEND_STORE_URI="$store"
export MLFLOW_AUTH_CONFIG_PATH="$repo/deploy/mlflow-auth.ini"

cd "$TEAM_DIR"  # deploy/mlflow-auth.ini's user store, basic_auth.db, is relative to it
exec "${MLFLOW:-mlflow}" server --app-name basic-auth \
  --artifacts-destination "${TEAM_ARTIFACTS:-$TEAM_DIR/mlartifacts}" \
  --host 127.0.0.1 \
  --port "${TEAM_PORT:-5000}" \
  --workers "${TEAM_WORKERS:-4}"
