#!/usr/bin/env bash
# Start/stop a local Ray cluster for `ray job submit`: a head node with the dashboard on
# 127.0.0.1:8265 plus optional extra worker nodes on the same machine.
#
#   cluster/local.sh start [--workers N] [--head-cpus C] [--worker-cpus C]
#   cluster/local.sh status     # the cluster, and exactly which processes `stop` would stop
#   cluster/local.sh stop       # stops that cluster only
#
# The cluster lives in its own Ray temp dir ($HSSAL_RAY_TEMP_DIR, default
# /tmp/ray_hssal_<user>_<port>), and every `ray start` runs in a session of its own whose id is
# recorded there (cluster/local_procs.py). `stop` stops the processes of those sessions and their
# children (job drivers included), and nothing else: no loop's private runtime, no other user's or
# worktree's cluster (`ray stop` would stop every Ray instance of this user). One cluster per
# RAY_PORT: set RAY_PORT (and RAY_DASHBOARD_PORT, RAY_CLIENT_SERVER_PORT) for a second one.
# The agents' and workers' ports are picked free, so loops and clusters on this machine coexist.
#
# Token auth is on (RAY_AUTH_MODE=token) for the nodes and for every client: the token is
# RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH when set, else one made for this cluster in
# $tmp/auth_token (mode 600, removed by `stop`); `start` prints the variables a client needs.
# A head without worker nodes listens on 127.0.0.1 only (Ray's single-machine mode,
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps the node address 127.0.0.1). Ray 2.60 refuses
# to `ray start` a worker node in that mode, so with --workers the nodes use the host's address
# (GCS, raylets, object managers and workers reachable from the network; the dashboard stays on
# 127.0.0.1) and the token is what refuses other clients.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${HSSAL_VENV:-$here/.venv}"
if [ -x "$venv/bin/ray" ]; then
  export PATH="$venv/bin:$PATH"   # jobs' `python` is the project's interpreter
fi
command -v ray >/dev/null || { echo "error: 'ray' not found; run 'make env' first" >&2; exit 2; }
py="$(command -v python || command -v python3)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 RAY_USAGE_STATS_ENABLED=0
port="${RAY_PORT:-6379}"
dash_port="${RAY_DASHBOARD_PORT:-8265}"
client_port="${RAY_CLIENT_SERVER_PORT:-10001}"
osm="${RAY_OBJECT_STORE_MEMORY:-1000000000}"
user="$(id -un 2>/dev/null || echo user)"
tmp="${HSSAL_RAY_TEMP_DIR:-/tmp/ray_hssal_${user}_${port}}"   # short: unix socket paths have a length limit
sessions="$tmp/hssal_local.sessions"
info="$tmp/hssal_local.info"
token_file="$tmp/auth_token"
procs() { "$py" "$here/cluster/local_procs.py" "$1" --temp-dir "$tmp" --sessions "$sessions" "${@:2}"; }
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

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

# the cluster's token for `ray start` and `ray status`: the user's if set, else this cluster's file
own_token=0
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  export RAY_AUTH_TOKEN_PATH="$token_file"
  own_token=1
fi

# ports of one node's agents: the RAY_* variables for the head, else free ones
agent_ports() {
  if [ "$1" = head ] && [ -n "${RAY_DASHBOARD_AGENT_PORT:-}" ]; then
    a="$RAY_DASHBOARD_AGENT_PORT"; g="${RAY_DASHBOARD_AGENT_GRPC_PORT:-$((a + 100))}"
    r="${RAY_RUNTIME_ENV_AGENT_PORT:-$((a + 200))}"; m="${RAY_METRICS_EXPORT_PORT:-$((a + 300))}"
  else
    a="$(free_port)"; g="$(free_port)"; r="$(free_port)"; m="$(free_port)"
  fi
  echo "--dashboard-agent-listen-port=$a --dashboard-agent-grpc-port=$g --runtime-env-agent-port=$r --metrics-export-port=$m"
}

case "$cmd" in
  start)
    if [ "$(procs list --count)" != 0 ]; then
      echo "error: a cluster started by cluster/local.sh is already running in $tmp (see 'cluster/local.sh status'; 'cluster/local.sh stop' first)" >&2
      exit 2
    fi
    mkdir -p "$tmp"; : > "$sessions"
    if [ "$own_token" = 1 ]; then
      (umask 077; "$py" -c 'import secrets; print(secrets.token_hex(32))' > "$token_file")
    elif [ "$RAY_AUTH_MODE" != token ]; then
      echo "warning: RAY_AUTH_MODE=$RAY_AUTH_MODE: anyone who reaches this cluster's ports can run code on it" >&2
    fi
    loopback=0
    if [ "$workers" = 0 ]; then loopback=1; fi
    head_agents="$(agent_ports head)"
    agent_port="${head_agents#--dashboard-agent-listen-port=}"; agent_port="${agent_port%% *}"
    # shellcheck disable=SC2086  # word splitting of the port options is intended
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="$((1 - loopback))" \
    procs session -- ray start --head --temp-dir="$tmp" --port="$port" --num-cpus="$head_cpus" \
      --node-ip-address=127.0.0.1 \
      --object-store-memory="$osm" --include-dashboard=true --dashboard-host=127.0.0.1 \
      --dashboard-port="$dash_port" --ray-client-server-port="$client_port" $head_agents \
      --min-worker-port=0 --max-worker-port=0 --disable-usage-stats >/dev/null
    for _ in $(seq 1 "$workers"); do
      # shellcheck disable=SC2086
      procs session -- ray start --address="127.0.0.1:$port" --temp-dir="$tmp" --num-cpus="$worker_cpus" \
        --object-store-memory="$osm" $(agent_ports worker) --min-worker-port=0 --max-worker-port=0 \
        --disable-usage-stats >/dev/null
    done
    printf 'gcs=127.0.0.1:%s\ndashboard=http://127.0.0.1:%s\nclient=ray://127.0.0.1:%s\nhead_agent_port=%s\nworkers=%s\nloopback=%s\nauth=%s\nstarted=%s\n' \
      "$port" "$dash_port" "$client_port" "$agent_port" "$workers" "$loopback" "$RAY_AUTH_MODE" "$(date '+%F %T')" > "$info"
    # wait until the job server accepts jobs (its agent can take a few seconds after the head)
    ok=0
    for _ in $(seq 1 90); do
      if ray job list --address "http://127.0.0.1:$dash_port" >/dev/null 2>&1 \
         && curl -sf "http://127.0.0.1:$agent_port/api/local_raylet_healthz" >/dev/null 2>&1; then ok=1; break; fi
      sleep 1
    done
    [ "$ok" = 1 ] || echo "warning: the job agent on 127.0.0.1:$agent_port did not answer yet" >&2
    echo "Ray head on 127.0.0.1:$port with $workers extra worker node(s); dashboard http://127.0.0.1:$dash_port"
    echo "temp dir $tmp ($(procs list --count) processes; 'cluster/local.sh status' lists them)"
    if [ "$loopback" = 1 ]; then where="127.0.0.1 only"; else where="the host's address (dashboard: 127.0.0.1)"; fi
    echo "listening on $where; token auth: $RAY_AUTH_MODE"
    auth="RAY_AUTH_MODE=$RAY_AUTH_MODE"
    if [ "$own_token" = 1 ]; then auth="$auth RAY_AUTH_TOKEN_PATH=$token_file"; fi
    echo "submit with:"
    echo "  $auth ray job submit --address http://127.0.0.1:$dash_port --working-dir . -- \\"
    echo "    python -m hssal_ray.loop --config configs/demo.yaml loop.run_dir=$PWD/runs"
    ;;
  stop)
    procs stop --grace "${HSSAL_STOP_GRACE_S:-5}"
    rm -f "$sessions" "$info" "$token_file"
    ;;
  status)
    echo "cluster of cluster/local.sh in $tmp"
    [ -f "$info" ] && sed 's/^/  /' "$info"
    procs list
    if [ "$(procs list --count)" != 0 ]; then
      # a client of a loopback-only head needs the same mode (else Ray turns 127.0.0.1 into the host address)
      if [ -f "$info" ] && grep -qx 'loopback=1' "$info"; then export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; fi
      ray status --address="127.0.0.1:$port" || true
    fi
    ;;
  *)
    echo "usage: cluster/local.sh start [--workers N] [--head-cpus C] [--worker-cpus C] | status | stop" >&2
    exit 2
    ;;
esac
