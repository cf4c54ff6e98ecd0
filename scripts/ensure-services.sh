#!/usr/bin/env bash
# Makes sure Redis (6379), RabbitMQ (5672) and MariaDB (3306) answer on 127.0.0.1.
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

ensure_redis
ensure_rabbitmq
ensure_mariadb
log "all services answer"
