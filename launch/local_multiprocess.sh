#!/usr/bin/env bash
# Start N (default 2) training processes on this machine, one JAX process each, talking through
# a localhost coordinator (CPU collectives: gloo). Every process feeds its slice of each global
# batch; process 0 logs and prints the summary. Stops all of them if one fails.
#
#   launch/local_multiprocess.sh --config configs/tiny.py --workdir /tmp/tiny
#   NUM_PROCESSES=4 PORT=12400 launch/local_multiprocess.sh --config ... --workdir ...
#   DEVICES_PER_PROCESS=2 launch/local_multiprocess.sh ...   # 2 simulated CPU devices per process
#   EXTRA_XLA_FLAGS=... appends XLA flags (the tests add theirs: tests/test_multiprocess.py runs this script)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${NUM_PROCESSES:-2}
PORT=${PORT:-12355}
LOGDIR=${LOGDIR:-$(mktemp -d -t dnd_launch.XXXXXX)}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
mkdir -p "$LOGDIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS} ${EXTRA_XLA_FLAGS:-}" JAX_PLATFORMS=cpu \
    "$PY" -m dnd_jax.train "$@" \
    --coordinator_address="localhost:${PORT}" --num_processes="$N" --process_id="$i" \
    >"$LOGDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
echo "started $N processes (logs: $LOGDIR)"
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $LOGDIR/process_$i.log" >&2
    status=1
    cleanup
  fi
done
trap - EXIT
tail -n 1 "$LOGDIR/process_0.log"
exit $status
