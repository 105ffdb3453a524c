#!/usr/bin/env bash
# scripts/with-agent.sh CMD [ARGS...]
#
# Runs CMD with a throwaway Consul dev agent and cleans up afterwards:
#   - creates a temp dir and exports CONSUL_TEST_TMP
#   - fetches consul (scripts/fetch-consul.sh) and exports CONSUL_BIN
#   - starts one shared plain dev agent in $CONSUL_TEST_TMP/shared and
#     exports CONSUL_TEST_ADDR (host:port), CONSUL_TEST_NODE,
#     CONSUL_TEST_HTTP_PORT, CONSUL_TEST_DC and CONSUL_TEST_PID
#   - unsets inherited CONSUL_HTTP_* variables
#   - runs CMD; on exit (or INT/TERM/HUP) stops every agent whose pid file is
#     under $CONSUL_TEST_TMP or whose dir is listed in $CONSUL_TEST_TMP/agents,
#     then removes the temp dir.
# Exits with CMD's exit status (or 128+N when killed by signal N).
#
# To make "no process outlives it" hold even though agents run detached
# (setsid), the script re-executes itself under a small perl child-subreaper
# (perl-base is Essential in Debian): orphaned agents are re-parented to it and
# reaped at once instead of lingering as zombies under PID 1, and any process
# CMD left behind is stopped (TERM, then KILL after 3 s) once the wrapper ends.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ $# -eq 0 ]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
fi

# ---- re-exec under a subreaper (once) ----------------------------------------
if [ -z "${WITH_AGENT_REAPER:-}" ] && [ -z "${WITH_AGENT_NO_REAPER:-}" ] && command -v perl >/dev/null 2>&1; then
  export WITH_AGENT_REAPER=1
  exec perl -e '
    use strict; use warnings;
    use POSIX ();
    # prctl(PR_SET_CHILD_SUBREAPER = 36, 1); SYS_prctl is 157 on x86_64,
    # 167 on aarch64/riscv64. Failure only means zombies may linger a bit.
    my %nr = (x86_64 => 157, aarch64 => 167, riscv64 => 167, i686 => 172, i386 => 172);
    my $arch = (POSIX::uname())[4];
    my $reaper = exists $nr{$arch} ? syscall($nr{$arch}, 36, 1, 0, 0, 0) == 0 : 0;
    # the wrapper must be able to trap these even if we were started with
    # them ignored (e.g. as an async command of a non-interactive shell)
    $SIG{$_} = "DEFAULT" for qw(INT TERM HUP);
    my $pid = fork();
    die "with-agent: fork: $!\n" unless defined $pid;
    if ($pid == 0) { exec { $ARGV[0] } @ARGV or die "with-agent: exec: $!\n"; }
    # forward termination signals to the wrapper (it cleans up)
    for my $s (qw(INT TERM HUP)) { $SIG{$s} = sub { kill $s, $pid; }; }
    my $status;
    while (1) {
      my $w = waitpid(-1, 0);
      if ($w == -1) { next if $!{EINTR}; last; }
      if ($w == $pid) { $status = $?; last; }
    }
    # Whatever is still our child now is a leftover (orphans are re-parented
    # to us): TERM it, KILL it if still there 3 s later; give up after 15 s.
    sub kids {
      my @k;
      opendir(my $d, "/proc") or return ();
      for my $p (grep { /^\d+$/ } readdir $d) {
        open(my $f, "<", "/proc/$p/stat") or next;
        my $st = <$f>; close $f;
        next unless defined $st && $st =~ /\)\s+(\S)\s+(\d+)/;
        push @k, $p if $2 == $$ && $1 ne "Z";
      }
      closedir $d;
      return @k;
    }
    my %termed;
    my $deadline = time + 15;
    while (time < $deadline) {
      1 while waitpid(-1, POSIX::WNOHANG()) > 0;
      my @k = kids();
      last unless @k;
      for my $k (@k) {
        if (!exists $termed{$k}) {
          my $c = ""; if (open(my $f, "<", "/proc/$k/comm")) { $c = <$f> // ""; chomp $c; close $f; }
          print STDERR "with-agent: stopping leftover process $k ($c)\n";
          kill "TERM", $k; $termed{$k} = time;
        } elsif (time - $termed{$k} >= 3) {
          kill "KILL", $k;
        }
      }
      select(undef, undef, undef, 0.05);
    }
    1 while waitpid(-1, POSIX::WNOHANG()) > 0;
    $status = 1 << 8 unless defined $status;
    if ($status & 127) { exit(128 + ($status & 127)); }
    exit($status >> 8);
  ' -- "${BASH_SOURCE[0]}" "$@"
fi

unset WITH_AGENT_REAPER   # a nested with-agent.sh gets its own reaper

log() { echo "with-agent: $*" >&2; }

# ---- temp dir + cleanup -------------------------------------------------------
CONSUL_TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/consul-test.XXXXXX") || { log "mktemp failed"; exit 1; }
export CONSUL_TEST_TMP

cleaned=0
cleanup() {
  [ $cleaned = 1 ] && return
  cleaned=1
  trap '' INT TERM HUP
  local d dirs=()
  if [ -f "$CONSUL_TEST_TMP/agents" ]; then
    while IFS= read -r d; do [ -n "$d" ] && dirs+=("$d"); done <"$CONSUL_TEST_TMP/agents"
  fi
  while IFS= read -r d; do dirs+=("$(dirname "$d")"); done \
    < <(find "$CONSUL_TEST_TMP" -name pid -type f 2>/dev/null)
  if [ ${#dirs[@]} -gt 0 ]; then
    printf '%s\n' "${dirs[@]}" | sort -u | while IFS= read -r d; do
      "$here/agent.sh" stop "$d" || log "failed to stop agent in $d"
    done
  fi
  rm -rf "$CONSUL_TEST_TMP"
}
on_signal() {
  local sig=$1 code=$2 i
  trap '' INT TERM HUP
  log "caught SIG$sig, cleaning up"
  if [ -n "${cmd_pid:-}" ]; then
    # async commands of a non-interactive shell ignore SIGINT, so use TERM
    kill -TERM "$cmd_pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$cmd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$cmd_pid" 2>/dev/null
  fi
  cleanup
  trap - EXIT
  exit "$code"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# ---- environment ----------------------------------------------------------------
for v in $(compgen -e | grep '^CONSUL_HTTP_' || true); do unset "$v"; done
unset CONSUL_CACERT CONSUL_CAPATH CONSUL_CLIENT_CERT CONSUL_CLIENT_KEY \
      CONSUL_TLS_SERVER_NAME CONSUL_GRPC_ADDR

CONSUL_BIN=$("$here/fetch-consul.sh") || { log "fetching consul failed"; exit 1; }
export CONSUL_BIN

# CONSUL_TEST_KV_MAX: a larger KV value limit for the shared agent (bytes)
out=$("$here/agent.sh" start "$CONSUL_TEST_TMP/shared" --name shared \
  ${CONSUL_TEST_KV_MAX:+--kv-max-value-size "$CONSUL_TEST_KV_MAX"}) || { log "starting the shared agent failed"; exit 1; }
eval "$out"
export CONSUL_TEST_ADDR=$ADDR
export CONSUL_TEST_NODE=$NODE
export CONSUL_TEST_HTTP_PORT=$HTTP_PORT
export CONSUL_TEST_DC=$DC
export CONSUL_TEST_PID=$PID   # the shared agent's own PID (benchmarks read its CPU)
unset ADDR NODE HTTP_PORT DC PID DIR LOG SERF_LAN_PORT SERVER_PORT out

# ---- run the command ----------------------------------------------------------------
# Run in the background and `wait`, so a signal to this script is handled at
# once (bash defers traps while a foreground child runs).
# (explicit <&0: otherwise bash gives background commands /dev/null as stdin)
"$@" <&0 &
cmd_pid=$!
status=0
while :; do
  wait "$cmd_pid"
  status=$?
  # wait returns >128 when interrupted by a trapped signal; loop if still alive
  kill -0 "$cmd_pid" 2>/dev/null || break
done
cmd_pid=""
exit "$status"
