#!/usr/bin/env bash
# Makes sure Redis (6379), RabbitMQ (5672) and MariaDB (3306) answer on 127.0.0.1;
# with --cluster also a 3-master Redis Cluster on 55001-55003 (bus ports 65001-65003)
# for the tests that run against a cluster (its seeds: REDIS_CLUSTER_NODES in test.sh);
# with --replicated a cluster of 3 masters with a replica each on 55011-55016, for the
# replication measurements (the failover tests start private ones of their own).
# Reuses what already runs; starts what is installed; installs from Debian's packages
# what is missing. Safe to run any number of times.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 0.5
  done
  log "$name did not open port $port"; return 1
}
source "$(dirname "$0")/lib.sh"

ensure_redis() {
  port_open 6379 && { log "redis: running"; return; }
  command -v redis-server >/dev/null || { log "redis: installing"; apt_install redis-server; }
  log "redis: starting"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/flashsale.log
  wait_port 6379 redis
}

ensure_rabbitmq() {
  port_open 5672 && { log "rabbitmq: running"; return; }
  command -v rabbitmq-server >/dev/null || { log "rabbitmq: installing"; apt_install rabbitmq-server; }
  log "rabbitmq: starting"
  as_root rabbitmq-server -detached || true
  wait_port 5672 rabbitmq 240
}

ensure_mariadb() {
  if port_open 3306; then log "mariadb: running"; return; fi
  command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || { log "mariadb: installing"; apt_install mariadb-server; }
  log "mariadb: starting"
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port 3306 mariadb
  # Root over TCP with an empty password, as the default settings expect.
  as_root mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" 2>/dev/null || true
}

CLUSTER_PORTS=(55001 55002 55003)
# 3 masters with a replica each (the replication and failover measurements), its seeds:
# redis://127.0.0.1:55011,...:55013.
REPLICATED_PORTS=(55011 55012 55013 55014 55015 55016)
cluster_ok() { redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

# Empty nodes (no persistence, like the single Redis) on the given ports, joined into one
# cluster with $1 replicas per master. A node that answers but is not part of a healthy
# cluster is restarted empty.
ensure_redis_cluster() {
  local replicas=$1; shift
  local ports=("$@") all_ok=1 port
  for port in "${ports[@]}"; do cluster_ok "$port" || all_ok=0; done
  if [[ $all_ok -eq 1 ]]; then log "redis cluster ${ports[0]}..: running"; return; fi
  log "redis cluster: starting on ${ports[*]} ($replicas replica(s) per master)"
  local base="${TMPDIR:-/tmp}/flashsale-redis-cluster"
  for port in "${ports[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 20); do port_open "$port" || break; sleep 0.25; done
  done
  # A node's port lies in the kernel's ephemeral range: a client's outgoing connection
  # can hold it for a moment, and the node then exits at once. Start it again, a few
  # times, before giving up.
  local attempt
  for port in "${ports[@]}"; do
    for attempt in 1 2 3 4 5; do
      rm -rf "${base:?}/$port" && mkdir -p "$base/$port"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
        --dir "$base/$port" --logfile "$base/$port/redis.log"
      wait_port "$port" "redis cluster node (attempt $attempt)" 20 && break
      [[ $attempt -eq 5 ]] && return 1
      tail -n 3 "$base/$port/redis.log" >&2 || true
      sleep 2
    done
  done
  local nodes=()
  for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >/dev/null
  for _ in $(seq 120); do
    all_ok=1
    for port in "${ports[@]}"; do cluster_ok "$port" || all_ok=0; done
    if [[ $all_ok -eq 1 ]]; then log "redis cluster ${ports[0]}..: ok"; return; fi
    sleep 0.5
  done
  log "redis cluster did not reach cluster_state:ok"; return 1
}

ensure_redis
for arg in "$@"; do
  case "$arg" in
    --cluster) ensure_redis_cluster 0 "${CLUSTER_PORTS[@]}" ;;
    --replicated) ensure_redis_cluster 1 "${REPLICATED_PORTS[@]}" ;;
  esac
done
ensure_rabbitmq
ensure_mariadb
log "all services answer"
