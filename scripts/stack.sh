#!/usr/bin/env bash
# `make up` / `make down`: ccq's processes as local background jobs against the local
# Redis, PostgreSQL and Docker engine. Pid files and logs live under .ccq/; `down` stops
# exactly the processes whose pid files `up` wrote.
#
# Before it says ready, `up` proves that session containers reach the gateway: a
# throw-away container on the session network calls it, and `up` fails in seconds naming
# the address if it cannot.
#
# The Claude credential (ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN) is handed to the
# gateway only; every other process is started without it.
#
# `down` stops the worker as Celery means it to be stopped (a warm shutdown: it takes no
# new task and lets its running ones finish) and kills it only after
# CCQ_WORKER_STOP_GRACE; the runs it still had are then settled by beat's reconciler
# (docs/reliability.md, "Stopping a worker").
#
# Environment: the usual CCQ_* settings (instance, ports, database, Redis),
# CCQ_STATE_DIR (default .ccq), where pid files, logs and the dev secret live, so a
# second stack (the test suite's) can run beside the user's, and CCQ_WORKER_STOP_GRACE
# (default 10m, as compose.yaml's stop_grace_period: seconds, or a number with s, m or h).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${CCQ_STATE_DIR:-.ccq}
WORKER_STOP_GRACE=${CCQ_WORKER_STOP_GRACE:-10m}
RUN=$STATE/run
LOGS=$STATE/log
ENV_FILE=$STATE/ccq.env
BIN=${CCQ_BIN:-.venv/bin}
mkdir -p "$RUN" "$LOGS"

say() { printf 'stack: %s\n' "$*"; }

# Every process but the gateway starts without the Claude credential in its environment.
WITHOUT_CREDENTIAL=(env -u ANTHROPIC_API_KEY -u CLAUDE_CODE_OAUTH_TOKEN
  -u CCQ_ANTHROPIC_API_KEY -u CCQ_CLAUDE_CODE_OAUTH_TOKEN)

running() { [[ -f $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {  # start NAME COMMAND...
  local name=$1
  shift
  if running "$name"; then
    say "$name: already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  # setsid: its own process group, so `down` stops its children (gunicorn, celery pool) too.
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  say "$name: started (pid $!, log $LOGS/$name.log)"
}

# A zombie (exited, not yet reaped by its parent) has stopped too.
alive() { kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]; }

seconds_of() {  # seconds_of DURATION: 90, 90s, 15m or 1h in whole seconds
  case $1 in
    *[0-9]s) echo "${1%s}" ;;
    *[0-9]m) echo $((${1%m} * 60)) ;;
    *[0-9]h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
  esac
}

stop() {  # stop NAME [GRACE_SECONDS [main]]: TERM, then KILL the group after the grace
  # period (10 s by default). `main` sends TERM to the main process alone.
  local name=$1 grace=${2:-10} only=${3:-} pid deadline
  [[ -f $RUN/$name.pid ]] || return 0
  pid=$(cat "$RUN/$name.pid")
  if alive "$pid"; then
    if [[ $only == main ]]; then
      kill -TERM "$pid" 2>/dev/null || true
    else
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
    deadline=$((SECONDS + grace))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.25; done
    if alive "$pid"; then
      say "$name: still running after the $grace s grace period: killed"
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true
    say "$name: stopped (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

stop_worker() {
  local grace
  grace=$(seconds_of "$WORKER_STOP_GRACE")
  if [[ ! $grace =~ ^[0-9]+$ ]]; then
    say "CCQ_WORKER_STOP_GRACE=$WORKER_STOP_GRACE: expected seconds, or a number with s, m or h"
    exit 2
  fi
  if [[ -f $RUN/worker.pid ]] && alive "$(cat "$RUN/worker.pid")"; then
    say "worker: warm shutdown: it finishes its running tasks, for up to $grace s"
  fi
  # TERM to Celery's main process only: its pool processes reset SIGTERM to the default
  # action, so a TERM to the whole group would kill the runs they are executing.
  stop worker "$grace" main
}

ensure_env_file() {
  if [[ ! -f $ENV_FILE ]]; then
    umask 077
    printf 'CCQ_JWT_SECRET=%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$ENV_FILE"
    say "wrote a development JWT secret to $ENV_FILE"
  fi
  use_env_file
}

use_env_file() {
  # Every process started here (and `ccq` run from anywhere with this exported) reads it.
  # Only once it exists: ccq refuses a CCQ_ENV_FILE that names no file.
  if [[ -f $ENV_FILE ]]; then
    CCQ_ENV_FILE=$(realpath "$ENV_FILE")
    export CCQ_ENV_FILE
  fi
}

setting() {  # setting NAME: one value of the settings every process reads
  "$BIN/python" -c "from orchestrator.settings import load_settings as l; print(l().$1)"
}

up() {
  ensure_env_file
  local model_url=""
  if [[ -z ${ANTHROPIC_API_KEY:-} && -z ${CLAUDE_CODE_OAUTH_TOKEN:-} ]]; then
    port=${CCQ_MODEL_SERVER_PORT:-8099}
    say "no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN: using the scripted model server on :$port"
    start model-server "$BIN/ccq" model-server --host 127.0.0.1 --port "$port" --record "$LOGS/model-server.jsonl"
    # Only the gateway calls the model: loopback is enough.
    export CCQ_ANTHROPIC_BASE_URL=${CCQ_ANTHROPIC_BASE_URL:-http://127.0.0.1:$port}
    model_url=$CCQ_ANTHROPIC_BASE_URL/_ccq/healthz
  else
    say "using the Claude credential from the environment (the gateway alone gets it)"
  fi
  "$BIN/ccq" db upgrade
  # Session containers join ccq's own bridge network; inside them host.docker.internal
  # is the host's address on it.
  network=$(setting session_network_name)
  if ! host_address=$("$BIN/ccq" network address); then
    say "cannot set up the Docker network $network for session containers (see above)"
    exit 1
  fi
  say "session network: $network (host address $host_address)"
  # Session containers call the gateway only: it listens there as well as on loopback,
  # and nowhere else. The API stays on loopback (CCQ_API_HOST, default 127.0.0.1).
  if [[ -z ${CCQ_GATEWAY_HOST:-} ]]; then
    export CCQ_GATEWAY_HOST=127.0.0.1,$host_address
  fi
  say "api: listening on $(setting api_host); gateway: on $CCQ_GATEWAY_HOST" \
    "(port $(setting gateway_port), egress proxy $(setting gateway_proxy_port))"
  say "session network: $(setting network_mode); egress names sessions may ask for:" \
    "$(setting "egress_allow and ', '.join(l().egress_allow) or 'none'")"
  start gateway "$BIN/ccq" gateway
  start api "${WITHOUT_CREDENTIAL[@]}" "$BIN/ccq" api
  start worker "${WITHOUT_CREDENTIAL[@]}" "$BIN/ccq" worker --loglevel=INFO --concurrency=4 --hostname="ccq@%h"
  start beat "${WITHOUT_CREDENTIAL[@]}" "$BIN/ccq" beat --loglevel=INFO --schedule="$STATE/celerybeat-schedule"
  start flower "${WITHOUT_CREDENTIAL[@]}" "$BIN/ccq" flower

  api_url=$(setting api_url)
  flower_url=$(setting flower_url)
  wait_until 30 "$api_url/healthz" "the API to answer"
  wait_until 30 "$flower_url/healthcheck" "Flower to answer"
  wait_until 30 "$(setting gateway_url)/healthz" "the gateway to answer"
  [[ -n $model_url ]] && wait_until 30 "$model_url" "the scripted model server to answer"
  container_gateway_url=$(setting gateway_url_for_containers)
  say "checking that session containers reach the gateway at $container_gateway_url ..."
  if ! "$BIN/ccq" network check --url "$container_gateway_url/healthz"; then
    say "session containers on network $network cannot reach ccq's gateway at $host_address."
    say "check that the gateway listens on $host_address (CCQ_GATEWAY_HOST=$CCQ_GATEWAY_HOST),"
    say "that no firewall drops traffic from the bridge to the host (iptables INPUT), or"
    say "set CCQ_CONTAINER_GATEWAY_URL to an address containers reach; then 'make up'"
    say "again ('make down' first if the gateway was already running)."
    exit 1
  fi
  wait_until 120 "$api_url/readyz" "the stack to be ready"
  token=$("$BIN/ccq" token --sub dev)
  say "ready"
  echo
  echo "  API:    $api_url"
  flower_login=""
  if [[ $(setting "flower_basic_auth is not None") == True ]]; then
    flower_login="   (login: CCQ_FLOWER_BASIC_AUTH)"
  fi
  echo "  Flower: $flower_url$flower_login"
  echo "  Token:  export CCQ_TOKEN=$token"
  echo "  Config: export CCQ_ENV_FILE=$CCQ_ENV_FILE   (for ccq run from another directory)"
  echo
}

wait_until() {  # wait_until SECONDS URL WHAT: until URL answers 2xx, or fail naming it
  local deadline=$((SECONDS + $1)) url=$2 what=$3
  say "waiting for $what ($url) ..."
  until curl -fsS --max-time 5 "$url" >/dev/null 2>&1; do
    for name in gateway api worker beat flower; do
      running "$name" || { say "$name exited; last lines of $LOGS/$name.log:"; tail -n 20 "$LOGS/$name.log"; exit 1; }
    done
    if ((SECONDS >= deadline)); then
      say "not ready after $1 s:"
      curl -sS --max-time 5 "$url" || true
      echo
      exit 1
    fi
    sleep 0.5
  done
}

down() {
  use_env_file  # absent before the first `up`: `down` then has only defaults to go by
  # The worker first, while the gateway, the API and beat still serve its runs.
  stop_worker
  for name in flower beat api gateway model-server; do stop "$name"; done
  # Session containers go too: their files stay, and the next prompt resumes the
  # conversation in a new container.
  instance=$(setting instance)
  containers=$(docker ps -aq --filter "label=ccq.instance=$instance" 2>/dev/null || true)
  if [[ -n $containers ]]; then
    # shellcheck disable=SC2086
    docker rm -f $containers >/dev/null
    say "removed $(wc -w <<<"$containers") session container(s)"
  fi
  networks=$(docker network ls -q --filter label=ccq.managed=1 --filter "label=ccq.instance=$instance" 2>/dev/null || true)
  if [[ -n $networks ]]; then
    # With its firewall chain (ccq's own command; the docker CLI would leave the chain).
    if "$BIN/ccq" network remove >/dev/null; then
      say "removed the session network and its firewall chain"
    else
      # shellcheck disable=SC2086
      docker network rm $networks >/dev/null && say "removed the session network"
    fi
  fi
  say "down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
