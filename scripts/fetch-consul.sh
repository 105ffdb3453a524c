#!/usr/bin/env bash
# Fetch Consul 1.8.7 (Debian bullseye's `consul` package) into .cache/consul
# without touching the machine's apt configuration, verify it, unpack it and
# print the path of the consul binary on stdout.  Idempotent: a second run
# only prints the path.
#
# The mirror URI is read at run time from the machine's apt sources; no host
# name is stored in this repository.
set -euo pipefail

SUITE=bullseye
PKG=consul
WANT_VERSION=1.8.7
WANT_SHA256=e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$top/.cache/consul
root=$cache/root
bin=$root/usr/bin/consul
stamp=$cache/verified.sha256

log() { echo "fetch-consul: $*" >&2; }
die() { echo "fetch-consul: ERROR: $*" >&2; exit 1; }

is_done() {
  [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$WANT_SHA256" ]
}

if is_done; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
# Serialise concurrent runs (flock is in util-linux, which is essential).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  flock 9
  if is_done; then echo "$bin"; exit 0; fi
fi

# --- a verified .deb from an earlier run only needs unpacking ---------------
unpack_deb() {
  local deb=$1 ver
  rm -rf "$root.new"
  dpkg -x "$deb" "$root.new"
  [ -x "$root.new/usr/bin/consul" ] || die "package has no usr/bin/consul"
  # (sed reads all of it: head would leave consul writing into a closed pipe, and a SIGPIPE
  # under pipefail fails the script at random)
  ver=$("$root.new/usr/bin/consul" version | sed -n 1p)
  case "$ver" in
    "Consul v$WANT_VERSION"*) ;;
    *) die "unexpected version: '$ver' (want v$WANT_VERSION)";;
  esac
  rm -rf "$root"
  mv "$root.new" "$root"
  echo "$WANT_SHA256" >"$stamp"
  log "$ver ready"
}
for deb in "$cache"/*.deb; do
  [ -f "$deb" ] || continue
  if [ "$(sha256sum "$deb" | awk '{print $1}')" = "$WANT_SHA256" ]; then
    unpack_deb "$deb"
    echo "$bin"
    exit 0
  fi
  rm -f "$deb"
done

# --- find the main archive's URI (and keyring) from the apt sources ---------
uri=""
keyring=""
src822=/etc/apt/sources.list.d/debian.sources
if [ -r "$src822" ]; then
  # deb822: stanzas separated by blank lines.  Take the first stanza whose
  # suites are not -security (and -updates/-backports alone) and print
  # "URI<TAB>Signed-By".
  res=$(awk '
    function flush() {
      if (uris != "" && main && !done) { print uris "\t" sb; done = 1 }
      uris = ""; sb = ""; main = 0
    }
    /^[ \t]*$/ { flush(); next }
    /^[ \t]*#/ { next }
    tolower($1) == "uris:"      { uris = $2; next }
    tolower($1) == "signed-by:" { sb = $2; next }
    tolower($1) == "suites:" {
      for (i = 2; i <= NF; i++)
        if ($i !~ /-(security|updates|backports|proposed-updates)$/ && $i !~ /\//) main = 1
      next
    }
    END { flush() }
  ' "$src822")
  uri=${res%%$'\t'*}
  keyring=${res#*$'\t'}
  [ "$keyring" = "$res" ] && keyring=""
fi
if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
  # one-line format: deb [opts] URI suite comp...
  uri=$(awk '$1 == "deb" {
           i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
           if ($(i+1) !~ /-(security|updates|backports)$/) { print $i; exit }
         }' /etc/apt/sources.list)
fi
[ -n "$uri" ] || die "could not find the Debian archive URI in $src822 or /etc/apt/sources.list"
case "$uri" in
  *security*) die "refusing security-archive URI '$uri'";;
esac

# --- private apt state -------------------------------------------------------
d=$cache/apt
mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/dl"
opts=""
if [ -n "$keyring" ] && [ -r "$keyring" ]; then
  opts=" [signed-by=$keyring]"
fi
echo "deb$opts $uri $SUITE main" >"$d/sources.list"

aptopts=(
  -o "Dir::Etc::SourceList=$d/sources.list"
  -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$d/lists"
  -o "Dir::Cache=$d/cache"
  -o "APT::Sandbox::User=root"
)

# A mirror can fail for a moment (a timeout, a sync in progress), and apt-get update can exit 0
# after a failed fetch: try update-then-download three times.
fetch_once() {
  rm -f "$d/dl/"*.deb
  log "apt-get update ($SUITE, private lists under $d)"
  apt-get -q "${aptopts[@]}" update >"$d/update.log" 2>&1 || { cat "$d/update.log"; return 1; }
  log "apt-get download $PKG"
  (cd "$d/dl" && apt-get -q "${aptopts[@]}" download "$PKG") >"$d/download.log" 2>&1 ||
    { cat "$d/update.log" "$d/download.log"; return 1; }
}
for attempt in 1 2 3; do
  fetch_once >"$d/attempt.log" && break
  log "attempt $attempt of 3 failed:"
  tail -n 8 "$d/attempt.log" | sed 's/^/    /' >&2
  [ $attempt = 3 ] && die "apt-get could not fetch $PKG from $SUITE"
  sleep $((attempt * 5))
done

deb=$(ls "$d/dl/"*.deb 2>/dev/null | sed -n 1p)
[ -n "$deb" ] || die "no .deb downloaded (see $d/download.log)"

got=$(sha256sum "$deb" | awk '{print $1}')
if [ "$got" != "$WANT_SHA256" ]; then
  die "sha256 mismatch for $(basename "$deb"):
    expected $WANT_SHA256
    got      $got
  refusing to use it"
fi

unpack_deb "$deb"
cp "$deb" "$cache/"
rm -rf "$d/dl" "$d/cache/archives"/*.deb
echo "$bin"
