#!/usr/bin/env bash
# Start/stop a local Ray cluster for `ray job submit`: a head node with the dashboard on
# 127.0.0.1:8265 plus optional extra worker nodes on the same machine.
#
#   cluster/local.sh start [--workers N] [--head-cpus C] [--worker-cpus C]
#   cluster/local.sh status
#   cluster/local.sh stop
#
# Token auth is turned off (RAY_AUTH_MODE=disabled) because this cluster listens on loopback
# only and is for local use. On real clusters keep Ray's token auth on (see README).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${HSSAL_VENV:-$here/.venv}"
if [ -x "$venv/bin/ray" ]; then
  export PATH="$venv/bin:$PATH"   # jobs' `python` is the project's interpreter
fi
command -v ray >/dev/null || { echo "error: 'ray' not found; run 'make env' first" >&2; exit 2; }
export RAY_AUTH_MODE=disabled RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 RAY_USAGE_STATS_ENABLED=0
port="${RAY_PORT:-6379}"
dash_port="${RAY_DASHBOARD_PORT:-8265}"
osm="${RAY_OBJECT_STORE_MEMORY:-1000000000}"
# Agent ports, so that two clusters (or a cluster and a `ray.init()`) on one machine don't collide.
agent_port="${RAY_DASHBOARD_AGENT_PORT:-52365}"
agent_grpc_port="${RAY_DASHBOARD_AGENT_GRPC_PORT:-$((agent_port + 100))}"
renv_port="${RAY_RUNTIME_ENV_AGENT_PORT:-$((agent_port + 200))}"
metrics_port="${RAY_METRICS_EXPORT_PORT:-$((agent_port + 300))}"

cmd="${1:-}"; shift || true
workers=0; head_cpus="${HEAD_CPUS:-2}"; worker_cpus="${WORKER_CPUS:-1}"
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2;;
    --head-cpus) head_cpus="$2"; shift 2;;
    --worker-cpus) worker_cpus="$2"; shift 2;;
    *) echo "error: unknown option $1" >&2; exit 2;;
  esac
done

case "$cmd" in
  start)
    ray start --head --port="$port" --num-cpus="$head_cpus" --object-store-memory="$osm" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
      --dashboard-agent-listen-port="$agent_port" --dashboard-agent-grpc-port="$agent_grpc_port" \
      --runtime-env-agent-port="$renv_port" --metrics-export-port="$metrics_port" \
      --disable-usage-stats >/dev/null
    for i in $(seq 1 "$workers"); do
      ray start --address="127.0.0.1:$port" --num-cpus="$worker_cpus" --object-store-memory="$osm" \
        --dashboard-agent-listen-port="$((agent_port + i))" --dashboard-agent-grpc-port="$((agent_grpc_port + i))" \
        --runtime-env-agent-port="$((renv_port + i))" --metrics-export-port="$((metrics_port + i))" \
        --disable-usage-stats >/dev/null
    done
    # wait until the job server accepts jobs (its agent can take a few seconds after the head)
    ok=0
    for _ in $(seq 1 90); do
      if ray job list --address "http://127.0.0.1:$dash_port" >/dev/null 2>&1 \
         && curl -sf "http://127.0.0.1:$agent_port/api/local_raylet_healthz" >/dev/null 2>&1; then ok=1; break; fi
      sleep 1
    done
    [ "$ok" = 1 ] || echo "warning: the job agent on 127.0.0.1:$agent_port did not answer yet" >&2
    echo "Ray head on 127.0.0.1:$port with $workers extra worker node(s); dashboard http://127.0.0.1:$dash_port"
    echo "submit with:"
    echo "  RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:$dash_port --working-dir . -- \\"
    echo "    python -m hssal_ray.loop --config configs/demo.yaml loop.run_dir=$PWD/runs"
    ;;
  stop)
    # note: `ray stop` stops every Ray instance of this user on this machine
    ray stop --force >/dev/null 2>&1 || true
    echo "Ray stopped"
    ;;
  status)
    ray status --address="127.0.0.1:$port"
    ;;
  *)
    echo "usage: cluster/local.sh start [--workers N] [--head-cpus C] [--worker-cpus C] | status | stop" >&2
    exit 2
    ;;
esac
