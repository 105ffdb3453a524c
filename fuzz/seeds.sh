#!/usr/bin/env bash
# fuzz/seeds.sh ADDR: (re)writes the seed corpus fuzz/corpus/* from a real Consul agent at
# ADDR (host:port): real answers, framed as each target reads its input (fuzz/*.c).
# Run by hand (scripts/with-agent.sh sets CONSUL_TEST_ADDR); the files are committed.
set -euo pipefail
addr=${1:?usage: fuzz/seeds.sh host:port}
cd "$(dirname "$0")/corpus"
u=http://$addr
curl -sf -X PUT --data-binary 'hello' "$u/v1/kv/seed/a" >/dev/null
curl -sf -X PUT --data-binary $'bin\x01\x00ary' "$u/v1/kv/seed/b?flags=16210313421097356768" >/dev/null
sid=$(curl -sf -X PUT -d '{"Name":"seed","TTL":"15s","LockDelay":"0s"}' "$u/v1/session/create" | python3 -c 'import json,sys;print(json.load(sys.stdin)["ID"])')
curl -sf -X PUT "$u/v1/kv/seed/lock?acquire=$sid&flags=3304740253564472344" >/dev/null
curl -sf -X PUT -d '{"Limit":2,"Holders":{"'"$sid"'":true}}' "$u/v1/kv/seed/sem/.lock?flags=16210313421097356768" >/dev/null
curl -sf -X PUT "$u/v1/event/fire/seed" -d 'payload' >/dev/null
n=0
body() {  # name path [method [data]]
  local name=$1 path=$2 method=${3:-GET} data=${4:-}
  if [ -n "$data" ]; then curl -sf -X "$method" -d "$data" "$u$path"; else curl -sf -X "$method" "$u$path"; fi >"../corpus.tmp"
  # json: a flags byte, then the text
  for f in 0 1 8 9; do printf "\\x$(printf %02x $f)" | cat - ../corpus.tmp >"json/$name-$f"; done
  # answer: kind byte, status/json byte (200, JSON), body
  for k in 0 1 2 4 6 7 8 9; do printf "\\x$(printf %02x $k)\\x08" | cat - ../corpus.tmp >"answer/$name-$k"; done
  n=$((n + 1))
}
body kv-record /v1/kv/seed/a
body kv-binary /v1/kv/seed/b
body kv-list '/v1/kv/seed/?recurse'
body kv-keys '/v1/kv/?keys'
body kv-lock /v1/kv/seed/lock
body sem-lock /v1/kv/seed/sem/.lock
body session-info "/v1/session/info/$sid"
body session-list /v1/session/list
body agent-self /v1/agent/self
body catalog-nodes /v1/catalog/nodes
body catalog-services /v1/catalog/services
body health-node "/v1/health/node/$(curl -sf "$u/v1/agent/self" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Config"]["NodeName"])')"
body event-list /v1/event/list
body txn /v1/txn PUT '[{"KV":{"Verb":"get","Key":"seed/a"}},{"KV":{"Verb":"lock","Key":"seed/t","Session":"'"$sid"'","Flags":3304740253564472344,"Value":"eA=="}}]'
body session-create /v1/session/create PUT '{"Name":"seed","TTL":"15s"}'
body leader /v1/status/leader
# wire: a piece-size byte, then the whole answer as it came, chunked framing and all
for p in /v1/kv/seed/a '/v1/kv/seed/a?raw' /v1/agent/self /v1/catalog/nodes '/v1/kv/nope'; do
  curl -s --raw -i "$u$p" >../corpus.tmp || true
  for b in 0 7 63 255; do printf "\\x$(printf %02x $b)" | cat - ../corpus.tmp >"wire/$(echo "$p" | tr -c 'a-z0-9' _)-$b"; done
done
# stream: a monitor's chunked body, as it came
( curl -s --raw -N "$u/v1/agent/monitor?loglevel=debug" >../corpus.tmp & pid=$!; sleep 0.3
  curl -sf "$u/v1/status/leader" >/dev/null; curl -sf "$u/v1/kv/seed/a" >/dev/null; sleep 1.2; kill $pid ) || true
for b in 0 31 200; do printf "\\x$(printf %02x $b)" | cat - ../corpus.tmp >"stream/monitor-$b"; done
# machine: the answers of one lock acquire and one semaphore acquire, in order
python3 - "$sid" <<'PY'
import json, subprocess, sys
sid = sys.argv[1]
def ans(status_byte, body, index=9):
    body = body.encode() if isinstance(body, str) else body
    out = b""
    while True:
        part, body = body[:255], body[255:]
        out += bytes([status_byte, index, len(part)]) + part
        if not body: return out
        status_byte = 0  # (a body longer than 255: cut into answers; good enough for seeds)
create = json.dumps({"ID": sid})
txn = json.dumps({"Results": [{"KV": {"Key": "k/\"x", "Flags": 3304740253564472344, "Session": sid, "ModifyIndex": 12}}], "Errors": None})
held = json.dumps([{"Key": "k/\"x", "Flags": 3304740253564472344, "Session": "22222222-2222-3333-4444-555555555555", "ModifyIndex": 11}])
seeds = {
  "lock-free": bytes([0]) + ans(0, create) + ans(3, "") + ans(0, txn),
  "lock-held": bytes([0]) + ans(0, create) + ans(0, held) + ans(0, json.dumps([{"LockDelay": 15000000000}])) + ans(3, "") + ans(0, txn),
  "lock-release": bytes([1]) + ans(0, "true") + ans(0, "true"),
  "sem-acquire": bytes([2]) + ans(0, create) + ans(0, "true") + ans(0, "[]") + ans(0, "true"),
  "sem-release": bytes([3]) + ans(0, "[]") + ans(0, "true") + ans(0, "true"),
}
for name, data in seeds.items():
    open("machine/" + name, "wb").write(data)
PY
rm -f ../corpus.tmp
echo "seeds: $n answers written"
