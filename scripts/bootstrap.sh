#!/usr/bin/env bash
# Installs what ccq needs on this machine and starts what is not running:
# the Docker engine, Redis, PostgreSQL (with ccq's role and database), debootstrap,
# iptables (the session network's firewall) and iproute2.
# Idempotent: every step checks first and says what it did. On Debian/Ubuntu as root it
# installs through apt; anywhere else it prints exactly what to install and exits 1.
#
# Redis keeps its data across restarts (appendonly, fsync every second): the Redis this
# script starts writes it under CCQ_BOOTSTRAP_REDIS_DIR, and a Redis it finds running
# without it gets it turned on in place (CONFIG SET; CONFIG REWRITE when the server has a
# config file). docs/reliability.md says what ccq loses when Redis loses its data anyway.
#
# Environment: CCQ_BOOTSTRAP_OS_RELEASE (default /etc/os-release) names the os-release
# file to read, so the unsupported-system path can be exercised. CCQ_BOOTSTRAP_REDIS_PORT
# (default 6379) and CCQ_BOOTSTRAP_REDIS_DIR (default /var/lib/ccq/redis) say where Redis
# listens and keeps its data, so a test can bootstrap a Redis of its own.
set -euo pipefail

OS_RELEASE=${CCQ_BOOTSTRAP_OS_RELEASE:-/etc/os-release}
LOG_DIR=${CCQ_BOOTSTRAP_LOG_DIR:-/var/log/ccq}
REDIS_PORT=${CCQ_BOOTSTRAP_REDIS_PORT:-6379}
REDIS_DIR=${CCQ_BOOTSTRAP_REDIS_DIR:-/var/lib/ccq/redis}
PG_ROLE=ccq
PG_PASSWORD=ccq
PG_DATABASE=ccq

say() { printf 'bootstrap: %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# --- what is missing -------------------------------------------------------------------
# command -> Debian package
declare -A PACKAGE_OF=(
  [docker]=docker.io [dockerd]=docker.io
  [redis-server]=redis-server [redis-cli]=redis-tools
  [pg_ctlcluster]=postgresql [psql]=postgresql-client
  [debootstrap]=debootstrap
  [iptables]=iptables [iptables-restore]=iptables [ip]=iproute2
)
missing_packages=()
for cmd in docker dockerd redis-server redis-cli pg_ctlcluster psql debootstrap \
  iptables iptables-restore ip; do
  if ! have "$cmd"; then
    pkg=${PACKAGE_OF[$cmd]}
    [[ " ${missing_packages[*]} " == *" $pkg "* ]] || missing_packages+=("$pkg")
  fi
done

os_id=unknown os_like=""
if [[ -r $OS_RELEASE ]]; then
  # shellcheck disable=SC1090
  os_id=$(. "$OS_RELEASE" && echo "${ID:-unknown}")
  os_like=$(. "$OS_RELEASE" && echo "${ID_LIKE:-}")
fi
apt_system=false
if [[ $os_id == debian || $os_id == ubuntu || " $os_like " == *" debian "* ]]; then
  apt_system=true
fi

if ((${#missing_packages[@]})); then
  if ! $apt_system; then
    say "unsupported system ($os_id): install these yourself, then run 'make bootstrap' again:"
    say "  Docker Engine (dockerd and the docker CLI), Redis 7 (redis-server, redis-cli),"
    say "  PostgreSQL 15+ (server and psql; a 'pg_ctlcluster' wrapper or your own service),"
    say "  debootstrap (only to build the worker image's base where no registry is reachable),"
    say "  iptables (the isolated session network's host firewall) and iproute2 (ip)."
    say "  Missing here: ${missing_packages[*]} (Debian package names)"
    exit 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    say "missing: ${missing_packages[*]}; run as root, or:"
    say "  sudo apt-get update && sudo apt-get install -y ${missing_packages[*]}"
    exit 1
  fi
  say "installing with apt: ${missing_packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing_packages[@]}" >/dev/null
  say "installed: ${missing_packages[*]}"
else
  say "already installed: Docker, Redis, PostgreSQL, debootstrap, iptables, iproute2"
fi

systemd_running() { [[ -d /run/systemd/system ]]; }
mkdir -p "$LOG_DIR"

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then say "$what did not come up; see $LOG_DIR"; exit 1; fi
    sleep 0.5
  done
}

# --- Docker engine ----------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  say "Docker engine: running"
else
  if systemd_running; then
    systemctl start docker
  else
    nohup dockerd >"$LOG_DIR/dockerd.log" 2>&1 &
  fi
  wait_for 60 "Docker engine" docker info
  say "Docker engine: started (log: $LOG_DIR/dockerd.log)"
fi

# --- Redis --------------------------------------------------------------------------------
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_config() { rcli CONFIG GET "$1" | sed -n 2p; }  # the value of one setting

# Appendonly on the running server, whoever started it. CONFIG SET only: never a restart,
# which would drop the clients of whoever else uses this Redis.
ensure_redis_aof() {
  local dir file reply setting
  dir=$(redis_config dir)
  if [[ $(redis_config appendonly) == yes ]]; then
    say "Redis: appendonly already on (appendfsync $(redis_config appendfsync), data dir $dir)"
  else
    # redis-cli exits 0 on an error reply: the reply says whether it worked.
    for setting in "appendfsync everysec" "appendonly yes"; do
      # shellcheck disable=SC2086
      reply=$(rcli CONFIG SET $setting 2>&1)
      if [[ $reply != OK ]]; then
        say "Redis: CONFIG SET $setting failed: $reply"
        exit 1
      fi
    done
    say "Redis: turned appendonly on (appendfsync everysec) with CONFIG SET; data dir $dir"
    file=$(rcli INFO server | tr -d '\r' | sed -n 's/^config_file://p')
    if [[ -z $file ]]; then
      say "Redis: it has no config file: the setting lasts until it restarts (bootstrap sets it again)"
    elif [[ $(rcli CONFIG REWRITE 2>&1) == OK ]]; then
      say "Redis: saved appendonly in its config file $file (CONFIG REWRITE)"
    else
      say "Redis: CONFIG REWRITE of $file failed: add 'appendonly yes' to it by hand"
    fi
  fi
  if [[ $dir == /tmp || $dir == /tmp/* ]]; then
    say "Redis: warning: its data dir $dir may not survive a reboot; restart it through" \
      "bootstrap (stop it, then run bootstrap) to keep its data in $REDIS_DIR"
  fi
}

if rcli ping >/dev/null 2>&1; then
  say "Redis: running on 127.0.0.1:$REDIS_PORT"
else
  if systemd_running && [[ $REDIS_PORT == 6379 ]]; then
    systemctl start redis-server  # its unit's config names its own data dir
  else
    mkdir -p "$REDIS_DIR"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
      --logfile "$LOG_DIR/redis.log" --dir "$REDIS_DIR" \
      --appendonly yes --appendfsync everysec >/dev/null
  fi
  wait_for 30 "Redis" rcli ping
  say "Redis: started on 127.0.0.1:$REDIS_PORT"
fi
ensure_redis_aof

# --- PostgreSQL -----------------------------------------------------------------------------
if pg_isready -h 127.0.0.1 -p 5432 -q; then
  say "PostgreSQL: running on 127.0.0.1:5432"
else
  cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}')
  if [[ -z $cluster ]]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    pg_createcluster "$version" main >/dev/null
    cluster="$version main"
    say "PostgreSQL: created cluster $cluster"
  fi
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster start
  wait_for 30 "PostgreSQL" pg_isready -h 127.0.0.1 -p 5432 -q
  say "PostgreSQL: started cluster $cluster"
fi

as_postgres() { if [[ $(id -u) -eq 0 ]]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }
if ! as_postgres "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$PG_ROLE'\"" | grep -q 1; then
  # CREATEDB: the test suite makes and drops its own databases.
  as_postgres "psql -qc \"CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'\""
  say "PostgreSQL: created role $PG_ROLE"
fi
if ! as_postgres "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='$PG_DATABASE'\"" | grep -q 1; then
  as_postgres "createdb -O $PG_ROLE $PG_DATABASE"
  say "PostgreSQL: created database $PG_DATABASE"
fi
say "ready: Docker, Redis and PostgreSQL are running"
