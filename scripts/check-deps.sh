#!/usr/bin/env bash
# Fails if a crate links something the architecture forbids (see ARCHITECTURE.md):
# the coordinator never links isolation or the agent, the agent never links the coordinator
# (and so its store), proto stays sans-IO, gpuaasctl speaks HTTP only (it may use proto's
# plain types, never a transport or a server crate).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
check() { # crate, then forbidden dependencies; the last argument is the reason
  local crate=$1 reason=${*: -1} tree
  # Captured first, so that a failing or empty `cargo tree` stops the script.
  tree=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}')
  if [ -z "$tree" ]; then
    echo "cargo tree -p $crate printed nothing" >&2
    exit 2
  fi
  local names
  names=$(awk '{print $1}' <<<"$tree" | sort -u)
  for dep in "${@:2:$#-2}"; do
    if grep -qx -- "$dep" <<<"$names"; then
      echo "FORBIDDEN: $crate depends on $dep ($reason)"
      fail=1
    fi
  done
}

check gpuaas-coordinator gpuaas-isolation gpuaas-agent "the coordinator never touches hosts; dev mode runs the agent as a process"
check gpuaas-agent gpuaas-coordinator "the agent never links the coordinator or its store"
check gpuaas-proto tokio quinn rusqlite axum mio socket2 "proto is sans-IO"
check gpuaas-ctl gpuaas-isolation gpuaas-agent gpuaas-coordinator quinn rusqlite "gpuaasctl speaks HTTP only"

if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "dependency direction ok"
