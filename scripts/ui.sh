#!/usr/bin/env bash
# `make ui`: a local Prefect server with every deployment of prefect.yaml served by a process worker, and the
# MLflow UI over the embedded store. Prints the URLs; Ctrl-C stops everything it started.
#   PREFECT_PORT (4200), MLFLOW_PORT (5000), BIN (.venv/bin) can be overridden.
set -euo pipefail
set -m  # every background job in its own process group, so one kill stops its children too
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.venv/bin}
HOST=127.0.0.1
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
POOL=fashionops-local  # prefect.yaml's work pool

export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.prefect}
export PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export FASHIONOPS_MLFLOW_UI=http://$HOST:$MLFLOW_PORT  # links in the flows' artifacts
LOGS=$PREFECT_HOME/logs
mkdir -p "$LOGS" "$ROOT/mlflow/artifacts"

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping: ${pids[*]:-nothing}"
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

wait_for() {  # URL, name, log file
  for _ in $(seq 1 180); do
    if "$BIN/python" -c "import urllib.request; urllib.request.urlopen('$1', timeout=2)" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "$2 did not come up on $1; see $3" >&2
  tail -n 20 "$3" >&2
  exit 1
}

echo "starting the Prefect server (logs: $LOGS/server.log)"
"$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT" >"$LOGS/server.log" 2>&1 &
pids+=($!)
echo "starting the MLflow UI (logs: $LOGS/mlflow.log)"
"$BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" \
  --backend-store-uri "sqlite:///$ROOT/mlflow/mlflow.db" \
  --default-artifact-root "$ROOT/mlflow/artifacts" >"$LOGS/mlflow.log" 2>&1 &
pids+=($!)
wait_for "$PREFECT_API_URL/health" "Prefect server" "$LOGS/server.log"

"$BIN/prefect" work-pool create "$POOL" --type process --overwrite >/dev/null
"$BIN/prefect" --no-prompt deploy --all
# Optional schedule for index-refresh from params.yaml (index.refresh_cron, e.g. "0 3 * * *").
CRON=$("$BIN/python" -c "import yaml; print((yaml.safe_load(open('params.yaml')).get('index') or {}).get('refresh_cron') or '')")
if [[ -n "$CRON" ]]; then
  "$BIN/prefect" --no-prompt deploy --name index-refresh --cron "$CRON"
fi
# Optional schedule for drift-report from params.yaml (monitor.cron, e.g. "0 6 * * *").
CRON=$("$BIN/python" -c "import yaml; print((yaml.safe_load(open('params.yaml')).get('monitor') or {}).get('cron') or '')")
if [[ -n "$CRON" ]]; then
  "$BIN/prefect" --no-prompt deploy --name drift-report --cron "$CRON"
fi
echo "starting a worker on pool $POOL (logs: $LOGS/worker.log)"
"$BIN/prefect" worker start --pool "$POOL" >"$LOGS/worker.log" 2>&1 &
pids+=($!)
wait_for "http://$HOST:$MLFLOW_PORT/health" "MLflow UI" "$LOGS/mlflow.log"

cat <<MSG

  Prefect UI   http://$HOST:$PREFECT_PORT        (deployments: training-pipeline, index-refresh, batch-scoring, drift-report, hpo-sweep)
  MLflow UI    http://$HOST:$MLFLOW_PORT
  run one:     PREFECT_API_URL=$PREFECT_API_URL $BIN/prefect deployment run training-pipeline/training-pipeline -p epochs=1

  Ctrl-C stops the server, the worker and the MLflow UI.
MSG
wait -n "${pids[@]}" || true
echo "a process exited; see $LOGS" >&2
