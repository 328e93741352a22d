#!/usr/bin/env bash
# Fails if a crate links something the architecture forbids (see ARCHITECTURE.md):
# the coordinator never links isolation or the agent, the agent never links the coordinator
# (and so its store), proto stays sans-IO, gpuaasctl speaks HTTP only (it may use proto's
# plain types, never a transport or a server crate).
set -euo pipefail
cd "$(dirname "$0")/.."

deps() {
  local out
  out=$(cargo tree -p "$1" -e normal --prefix none --format '{p}') || { echo "cargo tree -p $1 failed" >&2; exit 2; }
  [ -n "$out" ] || { echo "cargo tree -p $1 printed nothing" >&2; exit 2; }
  awk '{print $1}' <<<"$out" | sort -u
}
fail=0
forbid() { # crate, forbidden dependency, reason
  if deps "$1" | grep -qx "$2"; then
    echo "FORBIDDEN: $1 depends on $2 ($3)"; fail=1
  fi
}
forbid gpuaas-coordinator gpuaas-isolation "the coordinator never touches hosts"
forbid gpuaas-coordinator gpuaas-agent "dev mode starts the agent as a process"
forbid gpuaas-agent gpuaas-coordinator "the agent never links the store"
for d in tokio quinn rusqlite axum mio socket2; do
  forbid gpuaas-proto "$d" "proto is sans-IO"
done
for d in gpuaas-isolation gpuaas-agent gpuaas-coordinator quinn rusqlite; do
  forbid gpuaas-ctl "$d" "gpuaasctl speaks HTTP only"
done
[ "$fail" -eq 0 ] && echo "dependency direction ok"
exit "$fail"
