#!/usr/bin/env bash
# The service-path measurements of issue 8, each in one run with the bare echo as the rival
# (`poolclient loadtest --baseline echo`), on 1x64x56x56 float32 max 2x2/s2 unless said:
#   targets-c1-c8      unary p50 at concurrency 1 and throughput at concurrency 8, vs echo
#   targets-workers1/2 the same at concurrency 8 against --workers 1 and --workers 2 (8 connections,
#                      2 client processes)
#   targets-unary-*K / targets-stream-*K   Pool vs PoolStream for 4 KiB and 64 KiB inputs
#   oip_shm_224        OIP system shared memory vs socket for 1x64x224x224 (bench/oip_load.py)
# Usage: bench/service_targets.sh [out-dir]   (default bench/results/service_targets; ~4 minutes)
# POOLSERVE_KERNEL_LIB in the environment points the servers at another kernel build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/service_targets}
BIN=.venv/bin
mkdir -p "$OUT"
free_port() { $BIN/python -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

serve() {  # serve <port> [flags...]: start a server, wait until healthy
  local port=$1; shift
  $BIN/poolserve serve --port "$port" --metrics-port 0 --log-level warning "$@" > "${TMPDIR:-/tmp}/poolserve-bench-$port.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 150); do $BIN/poolserve health --target "127.0.0.1:$port" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "server on $port did not start" >&2; return 1
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" || true; }
load() {  # load <port> <name> [loadtest flags...]
  local port=$1 name=$2; shift 2
  $BIN/poolclient loadtest --target "127.0.0.1:$port" --mode max --kernel 2,2 --stride 2,2 \
    --duration 4 --warmup 1 --processes 1 --baseline echo --out "$OUT" --name "$name" --no-plots --quiet "$@"
}

P=$(free_port); serve "$P"
load "$P" targets-c1-c8 --shape 1,64,56,56 --concurrency 1,8 --channels 8
for s in 4K:1,16,8,8 64K:1,16,32,32; do
  load "$P" "targets-unary-${s%%:*}" --shape "${s#*:}" --concurrency 1,8 --channels 1 --api native
  load "$P" "targets-stream-${s%%:*}" --shape "${s#*:}" --concurrency 1,8 --channels 1 --api native-stream
done
stop

for w in 1 2; do
  P=$(free_port); serve "$P" --workers "$w"
  # two client processes: with the service as lean as the echo, one client process is the
  # bottleneck at concurrency 8 (2026-11-26: 1270 vs 1137 req/s, workers 1 vs 2, one process)
  load "$P" "targets-workers$w" --shape 1,64,56,56 --concurrency 8 --channels 8 --processes 2
  stop
done

$BIN/python bench/oip_load.py --shape 1,64,224,224 --concurrency 1 --modes oip oip_shm echo --seconds 4 \
  --out "$OUT/oip_shm_224.json"
