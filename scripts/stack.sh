#!/usr/bin/env bash
# `make up` / `make down`: ccq's processes as local background jobs against the local
# Redis, PostgreSQL and Docker engine. Pid files and logs live under .ccq/; `down` stops
# exactly the processes whose pid files `up` wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.ccq
RUN=$STATE/run
LOGS=$STATE/log
ENV_FILE=$STATE/ccq.env
BIN=.venv/bin
mkdir -p "$RUN" "$LOGS"

say() { printf 'stack: %s\n' "$*"; }

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

stop() {  # stop NAME
  local name=$1 pid
  [[ -f $RUN/$name.pid ]] || return 0
  pid=$(cat "$RUN/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    say "$name: stopped (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

ensure_env_file() {
  if [[ ! -f $ENV_FILE ]]; then
    umask 077
    printf 'CCQ_JWT_SECRET=%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$ENV_FILE"
    say "wrote a development JWT secret to $ENV_FILE"
  fi
}

up() {
  ensure_env_file
  if [[ -z ${ANTHROPIC_API_KEY:-} && -z ${CLAUDE_CODE_OAUTH_TOKEN:-} ]]; then
    port=${CCQ_MODEL_SERVER_PORT:-8099}
    say "no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN: using the scripted model server on :$port"
    start model-server "$BIN/ccq" model-server --port "$port" --record "$LOGS/model-server.jsonl"
    export CCQ_ANTHROPIC_BASE_URL=${CCQ_ANTHROPIC_BASE_URL:-http://host.docker.internal:$port}
    # The CLI insists on a credential; the scripted server ignores it.
    export ANTHROPIC_API_KEY=scripted-model-server
  else
    say "using the Claude credential from the environment"
  fi
  "$BIN/ccq" db upgrade
  if [[ -z ${CCQ_API_HOST:-} ]]; then
    # Session containers' MCP tools call the API through the Docker bridge's gateway
    # (host.docker.internal): listen there as well as on loopback, and nowhere else.
    gateway=$(docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}' 2>/dev/null || true)
    export CCQ_API_HOST=127.0.0.1${gateway:+,$gateway}
    say "api: listening on $CCQ_API_HOST"
  fi
  start api "$BIN/ccq" api
  start worker "$BIN/ccq" worker --loglevel=INFO --concurrency=4 --hostname="ccq@%h"
  start beat "$BIN/ccq" beat --loglevel=INFO --schedule="$STATE/celerybeat-schedule"
  start flower "$BIN/ccq" flower

  api_url=$("$BIN/python" -c 'from orchestrator.settings import load_settings as l; print(l().api_url)')
  flower_port=$("$BIN/python" -c 'from orchestrator.settings import load_settings as l; print(l().flower_port)')
  say "waiting for $api_url/readyz ..."
  for _ in $(seq 1 240); do
    if curl -fsS "$api_url/readyz" >/dev/null 2>&1; then
      token=$("$BIN/ccq" token --sub dev)
      say "ready"
      echo
      echo "  API:    $api_url"
      echo "  Flower: http://127.0.0.1:$flower_port"
      echo "  Token:  export CCQ_TOKEN=$token"
      echo
      return 0
    fi
    for name in api worker beat flower; do
      running "$name" || { say "$name exited; last lines of $LOGS/$name.log:"; tail -n 20 "$LOGS/$name.log"; exit 1; }
    done
    sleep 0.5
  done
  say "not ready after 120 s:"
  curl -sS "$api_url/readyz" || true
  echo
  exit 1
}

down() {
  for name in flower beat worker api model-server; do stop "$name"; done
  # Session containers stop too (their files stay; the next prompt resumes them).
  instance=$("$BIN/python" -c 'from orchestrator.settings import load_settings as l; print(l().instance)')
  running_sessions=$(docker ps -q --filter "label=ccq.instance=$instance" 2>/dev/null || true)
  if [[ -n $running_sessions ]]; then
    # shellcheck disable=SC2086
    docker stop --time 5 $running_sessions >/dev/null
    say "stopped $(wc -w <<<"$running_sessions") session container(s)"
  fi
  say "down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
