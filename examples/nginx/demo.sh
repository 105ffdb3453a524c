#!/usr/bin/env bash
# examples/nginx/demo.sh: `make nginx-demo`. Two nginx "nodes" (2 workers each) running
# examples/nginx/nginx.conf against the throwaway agent of scripts/with-agent.sh: a KV
# handler, a fleet-wide critical section, and the leader job, which moves to the other node
# when its nginx stops.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
addr=${CONSUL_TEST_ADDR:?run through scripts/with-agent.sh (make nginx-demo)}
tmp=$(mktemp -d "${CONSUL_TEST_TMP:-/tmp}/nginx-demo.XXXXXX")
say() { printf '\033[1m%s\033[0m %s\n' "[$1]" "$2"; }
free_port() { "$root/scripts/agent.sh" free-port; }

start() {  # start NODE PORT
  local p=$tmp/$1
  mkdir -p "$p/conf" "$p/logs" "$p/tmp"
  sed -e "s|@ROOT@|$root|g" -e "s|@PORT@|$2|g" "$root/examples/nginx/nginx.conf" >"$p/conf/nginx.conf"
  [ "$(id -u)" = 0 ] && sed -i 's/^worker_processes 2;/worker_processes 2;\nuser root;/' "$p/conf/nginx.conf"
  CONSUL_HTTP_ADDR=$addr DEMO_NODE=$1 nginx -p "$p/" -c "$p/conf/nginx.conf"
  for _ in $(seq 100); do curl -sf "127.0.0.1:$2/leader" >/dev/null && return; sleep 0.1; done
  cat "$p/logs/error.log"; exit 1
}
stop() {  # stop NODE: the master's PID from its pid file
  local pid; pid=$(cat "$tmp/$1/logs/nginx.pid")
  kill -QUIT "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}
trap 'for n in a b; do [ -f "$tmp/$n/logs/nginx.pid" ] && kill -QUIT "$(cat "$tmp/$n/logs/nginx.pid")" 2>/dev/null; done; true' EXIT

curl -sf -X PUT --data-binary 'hello from Consul KV' "http://$addr/v1/kv/demo/greeting" >/dev/null
pa=$(free_port); pb=$(free_port)
start a "$pa"; start b "$pb"
say demo "two nginx nodes: a on :$pa, b on :$pb (2 workers each), agent $addr"
say kv "GET /kv on a -> $(curl -s "127.0.0.1:$pa/kv?key=demo/greeting")"

say critical "20 concurrent requests to /critical, half on each node, serialised by one lock:"
for i in $(seq 10); do curl -s "127.0.0.1:$pa/critical" >/dev/null & curl -s "127.0.0.1:$pb/critical" >/dev/null & done; wait
say critical "the counter they incremented -> $(curl -s "http://$addr/v1/kv/demo/critical/count?raw") (20: no update lost)"

sleep 2
leader=$(curl -s "127.0.0.1:$pa/leader")
say leader "$leader"
case "$leader" in *"leader: a "*) first=a other=b port=$pb ;; *) first=b other=a port=$pa ;; esac
say leader "stopping node $first (nginx -s quit): its workers release the lock on their way out"
t0=$(date +%s.%N)
stop "$first"
for _ in $(seq 100); do
  now=$(curl -s "127.0.0.1:$port/leader")
  case "$now" in *"leader: $other "*) break ;; esac
  sleep 0.1
done
say leader "$now"
say leader "node $other took over $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s after node $first was told to stop"
stop "$other"
rm -rf "$tmp"
