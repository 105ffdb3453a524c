#!/usr/bin/env bash
# Throwaway Consul dev agents for tests.
#
#   scripts/agent.sh start DIR [--acl] [--acl-no-bootstrap] [--tls]
#                              [--tls-verify-incoming] [--unix] [--encrypt]
#                              [--name NAME] [--kv-max-value-size BYTES]
#                              [--raft-log-entries N]
#       Starts `consul agent -dev` on 127.0.0.1 with free ports, state in DIR
#       (created).  When the agent is ready, prints KEY=value lines on stdout
#       (values are single-quoted shell-style only when they need it):
#         ADDR HTTP_PORT PID DIR NODE DC LOG SERF_LAN_PORT SERF_WAN_PORT
#         SERVER_PORT                          always
#         TOKEN                                --acl (management token; also
#                                              set as the agent's own token)
#         HTTPS_ADDR HTTPS_PORT CA_FILE CLIENT_CERT CLIENT_KEY
#         TLS_VERIFY_INCOMING (0/1)            --tls / --tls-verify-incoming
#         UNIX_PATH                            --unix
#         ENCRYPT_KEY                          --encrypt
#       Ready means: /v1/status/leader names a leader, the ACL bootstrap (if
#       any) succeeded, and the node itself is in the catalog.
#       --acl-no-bootstrap: ACLs enabled as with --acl, but nobody bootstraps
#       them (no TOKEN is printed; the catalog wait is skipped, as reading it
#       needs a token).  Ready then means: a leader, and the ACL system
#       answers an anonymous /v1/acl/token/self with 403 "ACL not found".
#       (Right after that a bootstrap may still get 500 "The ACL system is
#       currently in legacy mode" for a moment: retry on it.)
#       All diagnostics go to stderr.  Exit status non-zero on failure (the
#       process is stopped again).
#       --kv-max-value-size BYTES: the largest KV value (and txn request).
#       --raft-log-entries N: keep the in-memory Raft log to about N entries
#       (a snapshot every 250-500 ms once N are new, N kept after it): for
#       many big writes, which otherwise grow a dev agent by gigabytes.
#
#   scripts/agent.sh stop DIR
#       Stops the agent whose PID is in DIR/pid (SIGTERM, up to 5 s, then
#       SIGKILL).  Idempotent.
#
#   scripts/agent.sh free-port [N]
#       Prints N (default 1) distinct free loopback ports, one a line.
#
# Environment:
#   CONSUL_BIN       consul binary (default: output of scripts/fetch-consul.sh)
#   CONSUL_TEST_TMP  if set, DIR is appended to $CONSUL_TEST_TMP/agents so
#                    scripts/with-agent.sh can stop it whatever happens.
#   AGENT_START_TIMEOUT  seconds to wait for readiness (default 30)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "agent.sh: $*" >&2; }
die() { echo "agent.sh: ERROR: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- helpers ---

# print KEY=value, quoting the value only when needed
emit() {
  local k=$1 v=$2
  if [[ $v =~ ^[A-Za-z0-9_./:+=@%,-]*$ ]]; then
    printf '%s=%s\n' "$k" "$v"
  else
    printf "%s='%s'\n" "$k" "${v//\'/\'\\\'\'}"
  fi
}

# is something listening on 127.0.0.1:$1 (TCP)?
port_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Ports already handed out by this script run (avoid picking one twice).
declare -A PICKED=()
port_lo=20000
port_hi=32000
if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
  read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range || true
  # stay below the ephemeral range so outgoing connections can't collide
  if [ -n "${eph_lo:-}" ] && [ "$eph_lo" -gt 21000 ]; then
    port_hi=$((eph_lo - 1))
  fi
fi

# is the port busy for TCP or UDP (serf also uses UDP)?  Uses ss when it
# exists, otherwise a bash /dev/tcp connect test (TCP only).
port_busy() {
  local p=$1
  if command -v ss >/dev/null 2>&1; then
    ss -Htuan 2>/dev/null | awk -v p="$p" '{n=split($5,a,":"); if (a[n]==p) f=1} END{exit !f}' && return 0
  fi
  port_listening "$p"
}

free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((port_lo + (RANDOM * 32768 + RANDOM) % (port_hi - port_lo + 1)))
    [ -n "${PICKED[$p]:-}" ] && continue
    port_busy "$p" && continue
    PICKED[$p]=1
    echo "$p"
    return 0
  done
  die "could not find a free port"
}

have_curl() { [ -z "${AGENT_NO_CURL:-}" ] && command -v curl >/dev/null 2>&1; }

# http_req METHOD PORT PATH [TOKEN]  -> prints "STATUS\nBODY"
# curl when present, else a raw HTTP/1.0 request over bash /dev/tcp.
http_req() {
  local method=$1 port=$2 path=$3 token=${4:-}
  if have_curl; then
    local hdr=()
    [ -n "$token" ] && hdr=(-H "X-Consul-Token: $token")
    local out
    out=$(curl -sS --max-time 5 -X "$method" "${hdr[@]}" \
            -w '\n%{http_code}' "http://127.0.0.1:$port$path" 2>/dev/null) || return 1
    printf '%s\n%s' "${out##*$'\n'}" "${out%$'\n'*}"
  else
    timeout 5 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      {
        printf "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n" "$2" "$3"
        [ -n "$4" ] && printf "X-Consul-Token: %s\r\n" "$4"
        printf "\r\n"
      } >&3
      resp=$(cat <&3)
      status=$(printf "%s" "$resp" | sed -n 1p | awk "{print \$2}")
      body=${resp#*$'"'"'\r\n\r\n'"'"'}
      printf "%s\n%s" "$status" "$body"
    ' _ "$port" "$method" "$path" "$token"
  fi
}

pid_alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  # a zombie is dead for our purposes
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
  [ "$state" != "Z" ]
}

# Is PID the consul agent of DIR? (guards against PID reuse)
pid_is_agent() {
  local pid=$1 dir=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-config-file=$dir/agent.hcl"
}

# stop_dir DIR [force]  (force: skip the cmdline check; used for the process
# this very invocation just started)
stop_dir() {
  local dir=$1 force=${2:-} pid i
  [ -f "$dir/pid" ] || return 0
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! [[ $pid =~ ^[0-9]+$ ]]; then
    rm -f "$dir/pid"; return 0
  fi
  if pid_alive "$pid" && { [ -n "$force" ] || pid_is_agent "$pid" "$dir"; }; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      log "agent $pid ($dir) ignored SIGTERM for 5 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 20); do
        pid_alive "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$dir/pid"
}

# ------------------------------------------------------------------ main ---

if [ "${1:-}" = free-port ]; then
  n=${2:-1}
  for _ in $(seq 1 "$n"); do free_port; done
  exit 0
fi

[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2
case "$dir" in /*) ;; *) dir=$(pwd)/$dir;; esac

if [ "$cmd" = stop ]; then
  [ $# -eq 0 ] || usage
  stop_dir "$dir"
  exit 0
fi
[ "$cmd" = start ] || usage

acl=0 bootstrap=1 tls=0 verify=0 unix=0 encrypt=0 name="" kv_max="" raft_log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --acl) acl=1;;
    --acl-no-bootstrap) acl=1; bootstrap=0;;
    --tls) tls=1;;
    --tls-verify-incoming) tls=1; verify=1;;
    --unix) unix=1;;
    --encrypt) encrypt=1;;
    --name) [ $# -ge 2 ] || usage; name=$2; shift;;
    --name=*) name=${1#--name=};;
    --kv-max-value-size) [ $# -ge 2 ] || usage; kv_max=$2; shift;;
    --raft-log-entries) [ $# -ge 2 ] || usage; raft_log=$2; shift;;
    *) log "unknown flag $1"; usage;;
  esac
  shift
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)

if [ -n "${CONSUL_TEST_TMP:-}" ]; then
  mkdir -p "$CONSUL_TEST_TMP"
  echo "$dir" >>"$CONSUL_TEST_TMP/agents"
fi

if [ -f "$dir/pid" ]; then
  oldpid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -n "$oldpid" ] && pid_alive "$oldpid" && pid_is_agent "$oldpid" "$dir"; then
    die "an agent (pid $oldpid) is already running in $dir"
  fi
  rm -f "$dir/pid"
fi

consul=${CONSUL_BIN:-}
if [ -z "$consul" ]; then
  consul=$("$here/fetch-consul.sh")
fi
[ -x "$consul" ] || die "consul binary '$consul' is not executable"

if [ -z "$name" ]; then
  base=$(basename "$dir" | tr -c 'A-Za-z0-9-\n' '-' | cut -c1-40)
  name="t-${base}-$$"
fi
dc=dc1

# --- one-time material (certs, gossip key) ---------------------------------
if [ $tls = 1 ]; then
  if [ ! -f "$dir/dc1-server-consul-0.pem" ]; then
    (
      cd "$dir"
      rm -f consul-agent-ca*.pem dc1-*-consul-*.pem
      "$consul" tls ca create
      "$consul" tls cert create -server -dc "$dc"
      "$consul" tls cert create -client -dc "$dc"
    ) >"$dir/tls.log" 2>&1 || { cat "$dir/tls.log" >&2; die "creating TLS material failed"; }
  fi
  ca_file=$dir/consul-agent-ca.pem
  server_cert=$dir/dc1-server-consul-0.pem
  server_key=$dir/dc1-server-consul-0-key.pem
  client_cert=$dir/dc1-client-consul-0.pem
  client_key=$dir/dc1-client-consul-0-key.pem
fi
if [ $encrypt = 1 ]; then
  if [ ! -s "$dir/encrypt.key" ]; then
    "$consul" keygen >"$dir/encrypt.key"
  fi
  encrypt_key=$(cat "$dir/encrypt.key")
fi
unix_path=$dir/http.sock
if [ $unix = 1 ]; then
  # addresses.http is a space-separated list, and sun_path holds 107 bytes
  case "$unix_path" in *[[:space:]]*) die "--unix needs a DIR without whitespace: $dir";; esac
  [ ${#unix_path} -le 100 ] || die "--unix: socket path too long (${#unix_path} > 100): $unix_path"
fi

timeout_s=${AGENT_START_TIMEOUT:-30}

write_config() {
  local http_addr='"127.0.0.1"'
  if [ $unix = 1 ]; then
    http_addr="\"127.0.0.1 unix://$unix_path\""
  fi
  {
    echo "node_name            = \"$name\""
    echo "datacenter           = \"$dc\""
    echo "bind_addr            = \"127.0.0.1\""
    echo "client_addr          = \"127.0.0.1\""
    echo "advertise_addr       = \"127.0.0.1\""
    echo "disable_update_check = true"
    echo "log_level            = \"INFO\""
    echo "addresses {"
    echo "  http = $http_addr"
    [ $tls = 1 ] && echo "  https = \"127.0.0.1\""
    echo "}"
    echo "ports {"
    echo "  http     = $http_port"
    echo "  https    = $https_port"
    echo "  grpc     = -1"
    echo "  dns      = -1"
    echo "  serf_lan = $serf_lan"
    echo "  serf_wan = $serf_wan"
    echo "  server   = $server_port"
    echo "}"
    if [ $unix = 1 ]; then
      echo "unix_sockets { mode = \"0777\" }"
    fi
    if [ $tls = 1 ]; then
      echo "ca_file   = \"$ca_file\""
      echo "cert_file = \"$server_cert\""
      echo "key_file  = \"$server_key\""
      if [ $verify = 1 ]; then
        echo "verify_incoming_https = true"
      else
        echo "verify_incoming_https = false"
      fi
    fi
    if [ $encrypt = 1 ]; then
      echo "encrypt = \"$encrypt_key\""
    fi
    if [ -n "$kv_max" ]; then
      # a KV value (and a txn request) may be this large; Consul's default is 512 KiB
      echo "limits {"
      echo "  kv_max_value_size = $kv_max"
      echo "  txn_max_req_len   = $kv_max"
      echo "}"
    fi
    if [ -n "$raft_log" ]; then
      # a dev agent keeps its Raft log in memory, and by default only compacts it past 16384
      # entries keeping 10240: with 1 MiB values that is gigabytes, and an agent whose cost per
      # write changes as its heap grows.  Snapshot every second or so past N entries, keep N.
      echo "raft_snapshot_threshold = $raft_log"
      echo "raft_trailing_logs      = $raft_log"
      echo "raft_snapshot_interval  = \"250ms\""
    fi
    if [ $acl = 1 ]; then
      echo "primary_datacenter = \"$dc\""
      echo "acl {"
      echo "  enabled        = true"
      echo "  default_policy = \"deny\""
      echo "  down_policy    = \"extend-cache\""
      echo "}"
    fi
  } >"$dir/agent.hcl"
}

# start one attempt; returns 0 ready, 1 process died (retryable), 2 timeout
attempt() {
  http_port=$(free_port)
  serf_lan=$(free_port)
  serf_wan=$(free_port)
  server_port=$(free_port)
  if [ $tls = 1 ]; then https_port=$(free_port); else https_port=-1; fi
  write_config
  rm -f "$dir/pid" "$unix_path"
  : >"$dir/agent.log"

  # setsid: own session, so terminal signals to the caller don't hit it;
  # `exec` keeps the PID written by sh as consul's own PID.
  CONSUL_BIN_PATH=$consul AGENT_DIR=$dir setsid sh -c \
    'echo $$ >"$AGENT_DIR/pid"; exec "$CONSUL_BIN_PATH" agent -dev -config-file="$AGENT_DIR/agent.hcl" >>"$AGENT_DIR/agent.log" 2>&1' \
    </dev/null >/dev/null 2>&1 &

  local deadline=$((SECONDS + timeout_s)) resp status body
  pid=""
  while [ $SECONDS -lt $deadline ]; do
    if [ -z "$pid" ] && [ -s "$dir/pid" ]; then pid=$(cat "$dir/pid"); fi
    if [ -n "$pid" ] && ! pid_alive "$pid"; then
      return 1
    fi
    if [ -n "$pid" ] && resp=$(http_req GET "$http_port" /v1/status/leader 2>/dev/null); then
      status=${resp%%$'\n'*}
      body=${resp#*$'\n'}
      if [ "$status" = 200 ] && [[ $body =~ ^\"[^\"]+\"$ ]]; then
        return 0
      fi
    fi
    sleep 0.1
  done
  return 2
}

tail_log() {
  log "---- last lines of $dir/agent.log ----"
  tail -n 30 "$dir/agent.log" >&2 || true
  log "--------------------------------------"
}

started=0
for try in 1 2 3; do
  rc=0
  attempt || rc=$?
  if [ $rc = 0 ]; then started=1; break; fi
  if [ $rc = 1 ]; then
    log "agent exited during start-up (attempt $try); retrying with new ports"
    tail -n 5 "$dir/agent.log" >&2 || true
    cp "$dir/agent.log" "$dir/agent.log.failed.$try" 2>/dev/null || true
    stop_dir "$dir" force
    continue
  fi
  # rc 2: no leader within the time; a slow first start on a cold machine, say: try again
  log "agent did not become ready within ${timeout_s}s (attempt $try)"
  tail_log
  cp "$dir/agent.log" "$dir/agent.log.failed.$try" 2>/dev/null || true
  stop_dir "$dir" force
done
if [ $started != 1 ]; then
  tail_log
  stop_dir "$dir" force
  die "agent failed to start after 3 attempts"
fi

fail() { tail_log; stop_dir "$dir" force; die "$*"; }

# --- ACL bootstrap -----------------------------------------------------------
token=""
if [ $acl = 1 ] && [ $bootstrap = 0 ]; then
  # not bootstrapped: wait until the ACL system resolves tokens
  deadline=$((SECONDS + timeout_s))
  while :; do
    resp=$(http_req GET "$http_port" /v1/acl/token/self 2>/dev/null || true)
    status=${resp%%$'\n'*}
    body=${resp#*$'\n'}
    [ "$status" = 403 ] && [[ $body == *"ACL not found"* ]] && break
    [ $SECONDS -lt $deadline ] || fail "ACL system not up: status '$status' body '$body'"
    pid_alive "$pid" || fail "agent died while waiting for the ACL system"
    sleep 0.1
  done
elif [ $acl = 1 ]; then
  deadline=$((SECONDS + timeout_s))
  while :; do
    resp=$(http_req PUT "$http_port" /v1/acl/bootstrap 2>/dev/null || true)
    status=${resp%%$'\n'*}
    body=${resp#*$'\n'}
    if [ "$status" = 200 ]; then
      token=$(printf '%s' "$body" | tr -d ' \n' | sed -n 's/.*"SecretID":"\([^"]*\)".*/\1/p')
      [ -n "$token" ] && break
    fi
    [ $SECONDS -lt $deadline ] || fail "ACL bootstrap failed: status '$status' body '$body'"
    pid_alive "$pid" || fail "agent died during ACL bootstrap"
    sleep 0.2
  done
  echo "$token" >"$dir/token"
  # let the agent itself use the management token (anti-entropy, node sync)
  http_req PUT "$http_port" /v1/agent/token/agent "$token" >/dev/null 2>&1 || true
fi

# --- wait until the agent's own node is in the catalog -------------------------
# (so tests can query /v1/catalog/node/NODE etc. right away)
deadline=$((SECONDS + timeout_s))
while [ $acl = 0 ] || [ $bootstrap = 1 ]; do
  resp=$(http_req GET "$http_port" "/v1/catalog/node/$name" "$token" 2>/dev/null || true)
  status=${resp%%$'\n'*}
  body=${resp#*$'\n'}
  if [ "$status" = 200 ] && [ -n "$body" ] && [ "$body" != null ]; then break; fi
  [ $SECONDS -lt $deadline ] || fail "node $name never showed up in the catalog (status '$status')"
  pid_alive "$pid" || fail "agent died while waiting for node registration"
  sleep 0.1
done

# --- TLS listener ----------------------------------------------------------------
if [ $tls = 1 ]; then
  deadline=$((SECONDS + 10))
  until port_listening "$https_port"; do
    [ $SECONDS -lt $deadline ] || fail "HTTPS port $https_port not listening"
    sleep 0.1
  done
fi

# --- report ------------------------------------------------------------------
emit ADDR "127.0.0.1:$http_port"
emit HTTP_PORT "$http_port"
emit PID "$pid"
emit DIR "$dir"
emit NODE "$name"
emit DC "$dc"
emit LOG "$dir/agent.log"
emit SERF_LAN_PORT "$serf_lan"
emit SERF_WAN_PORT "$serf_wan"
emit SERVER_PORT "$server_port"
[ $acl = 1 ] && [ $bootstrap = 1 ] && emit TOKEN "$token"
if [ $tls = 1 ]; then
  emit HTTPS_ADDR "127.0.0.1:$https_port"
  emit HTTPS_PORT "$https_port"
  emit CA_FILE "$ca_file"
  emit CLIENT_CERT "$client_cert"
  emit CLIENT_KEY "$client_key"
  emit TLS_VERIFY_INCOMING "$verify"
fi
[ $unix = 1 ] && emit UNIX_PATH "$unix_path"
[ $encrypt = 1 ] && emit ENCRYPT_KEY "$encrypt_key"
exit 0
