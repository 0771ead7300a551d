#!/usr/bin/env bash
# Every long CPU run behind docs/, in order, from one command; each job is a resumable verb, so the
# queue can be killed and restarted at any point (a machine replaced between sessions included: a
# fresh clone plus this script picks up from scratch).
#
#   nohup launch/queue.sh > queue.out 2>&1 &         # every job not yet done, in order
#   launch/queue.sh results math                     # only these jobs (their order here)
#   launch/queue.sh --list                           # the jobs and their commands; runs nothing
#   launch/queue.sh --status                         # each job's state and its log's last progress line
#
# Results are written under $QUEUE_ROOT/docs/ (default workdir/docs), never into docs/: compare
# (bench/compare_results.py for docs/results) and copy them by hand. Per job: $QUEUE_ROOT/queue/<job>.log,
# and <job>.done once it has exited 0 (delete it to run the job again; the verbs' caches make a
# rerun cheap), <job>.failed after a non-zero exit, <job>.running while it runs (left behind by a killed
# queue: --status says "interrupted"). A process SIGKILLed (the OOM killer) is run again, up to
# $QUEUE_RETRIES (2) times. One queue at a time per $QUEUE_ROOT: a second one is refused
# (exit 2) while queue.pid names a live queue. Zoos are collected by two 1-thread shards side by side
# (1.38x the LoRA steps per second of one 2-thread process on 2 cores: docs/scaling/costs); the math and
# coding experiments likewise run their targets in two 1-core shards (`experiment --shard`), then write
# their report in one more, cached, run; so do the condition draws (`bench/condition_draws.py --shard`). Edit the tree while it runs only
# from another clone: each job imports the code as it is when the job starts.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
Q=${QUEUE_ROOT:-workdir}
SHARDS=${QUEUE_SHARDS:-2}
NICE=${QUEUE_NICE:-10}
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false

# name | command (run with eval; `collect_shards CONFIG WORKDIR` for a zoo). sciq_generator is the commonsense
# generator the math and coding experiments also evaluate on their targets (cross-domain); their configs
# name it as workdir/smollm2/generators/sciq, relative to the repository: with another QUEUE_ROOT, link
# workdir to it. The *_100 jobs are the curve's K = 100 point first (the targets and the pool's first 100
# tasks, ~2/3 of the many-task zoo; the function-space loss at K = 100 was the one point never measured);
# many_zoo, curve and curve_fl1 then extend that zoo and find K = 100 cached.
JOBS=(
  "results_zoo|collect_shards configs/smollm2_commonsense.py $Q/smollm2"
  "sciq_generator|$PY -m dnd_jax.experiment --config configs/smollm2_commonsense.py --workdir $Q/smollm2 --only sciq --train_only"
  "results|$PY -m dnd_jax.experiment --config configs/smollm2_commonsense.py --workdir $Q/smollm2 --docs $Q/docs/results"
  "math_zoo|collect_shards configs/smollm2_math.py $Q/math"
  "math|experiment_shards configs/smollm2_math.py $Q/math $Q/docs/results/math"
  "coding_zoo|collect_shards configs/smollm2_coding.py $Q/coding"
  "coding|experiment_shards configs/smollm2_coding.py $Q/coding $Q/docs/results/coding"
  "draws|draws_shards configs/smollm2_commonsense.py $Q/smollm2 $Q/docs/results/condition_draws"
  "many_data|$PY -m dnd_jax.task_sources.bigbench"
  "many_zoo_100|collect_shards configs/smollm2_many.py:pool=100 $Q/many"
  "curve_100|$PY -m dnd_jax.scaling --config configs/smollm2_many.py --workdir $Q/many --docs $Q/docs/scaling --sizes 100"
  "curve_fl1_100|$PY -m dnd_jax.scaling --config configs/smollm2_many.py --workdir $Q/many --docs $Q/docs/scaling --sizes 100 --variant fl1 --config.function_loss.weight=1.0"
  "many_zoo|collect_shards configs/smollm2_many.py $Q/many"
  "curve|$PY -m dnd_jax.scaling --config configs/smollm2_many.py --workdir $Q/many --docs $Q/docs/scaling"
  "curve_fl1|$PY -m dnd_jax.scaling --config configs/smollm2_many.py --workdir $Q/many --docs $Q/docs/scaling --sizes 25,50,100,152 --variant fl1 --config.function_loss.weight=1.0"
)

RETRIES=${QUEUE_RETRIES:-2}
# Run "$@" again when it was SIGKILLed (exit 137: the kernel's OOM killer, usually), up to RETRIES times:
# every job is resumable, so a retry continues where the killed process stopped. Other failures (a
# user error, a bug, a SIGTERM that stops the queue) are not retried.
retry_killed() {
  local rc n=0
  while true; do
    "$@"
    rc=$?
    ((rc == 137 && n < RETRIES)) || return $rc
    n=$((n + 1))
    echo "queue.sh: SIGKILLed (out of memory?): $*; retry $n of $RETRIES" >&2
    sleep "${QUEUE_RETRY_WAIT:-30}"
  done
}

collect_shards() {  # CONFIG WORKDIR: SHARDS 1-thread collectors on one zoo, one core each; fails if any fails
  pinned_shards $PY -m dnd_jax.collect --config "$1" --workdir "$2" --config.zoo.torch_threads=1
}

allowed_cpus() {  # the CPU numbers this process may run on ("0-3,8" in /proc/self/status -> 0 1 2 3 8)
  local list r c ranges out=()
  list=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status 2> /dev/null)
  IFS=, read -ra ranges <<< "$list"
  for r in "${ranges[@]}"; do
    if [[ $r == *-* ]]; then for ((c = ${r%-*}; c <= ${r#*-}; c++)); do out+=("$c"); done
    elif [[ -n $r ]]; then out+=("$r"); fi
  done
  echo "${out[@]}"
}

pinned_shards() {  # COMMAND...: COMMAND --shard=I/SHARDS for every I, one process per core; fails if any does
  local pids=() rc=0 i pin=() cpus
  read -ra cpus <<< "$(allowed_cpus)"
  for ((i = 0; i < SHARDS; i++)); do
    # one core per shard (torch's and XLA's thread pools both size themselves from the affinity mask),
    # where taskset exists and can pin to one of the cores this queue may use
    pin=()
    if ((${#cpus[@]})) && taskset -c "${cpus[i % ${#cpus[@]}]}" true 2> /dev/null; then
      pin=(taskset -c "${cpus[i % ${#cpus[@]}]}")
    fi
    OMP_NUM_THREADS=1 retry_killed "${pin[@]}" "$@" --shard="$i/$SHARDS" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  return $rc
}

experiment_shards() {  # CONFIG WORKDIR DOCS: the targets in SHARDS processes, one core each, then the report
  pinned_shards $PY -m dnd_jax.experiment --config "$1" --workdir "$2" || return
  retry_killed $PY -m dnd_jax.experiment --config "$1" --workdir "$2" --docs "$3"  # all cached: writes the report
}

draws_shards() {  # CONFIG WORKDIR OUT: bench/condition_draws.py's targets in SHARDS processes, then the report
  local args=(--config "$1" --workdir "$2" --seeds 0,1,2,3,4 --metrics cloze)
  pinned_shards $PY bench/condition_draws.py "${args[@]}" || return
  retry_killed $PY bench/condition_draws.py "${args[@]}" --out "$3"  # all cached: writes the report
}

if [[ ${1:-} == --list ]]; then
  for j in "${JOBS[@]}"; do printf '%-14s %s\n' "${j%%|*}" "${j#*|}"; done
  exit 0
fi

alive() {  # PIDFILE: true if it names a live queue.sh (a reused pid of another program does not count)
  local pid
  [[ -s $1 ]] && read -r pid _ < "$1" && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2> /dev/null &&
    [[ $(ps -o args= -p "$pid" 2> /dev/null) == *queue.sh* ]]
}

if [[ ${1:-} == --status ]]; then
  for j in "${JOBS[@]}"; do
    name=${j%%|*} f=$Q/queue/${j%%|*}
    if [[ -e $f.done ]]; then state="done $(< "$f.done")"
    elif [[ -e $f.running ]] && alive "$f.running"; then state="running"
    elif [[ -e $f.running ]]; then state="interrupted"
    elif [[ -e $f.failed ]]; then state="failed $(< "$f.failed")"
    else state="pending"; fi
    last=""
    # the last progress line: tqdm redraws with carriage returns, so split on them too
    # (shards write interleaved bars: the latest line of each unfinished bar, joined by " ; ")
    # (a log longer than the 4 KiB read: its first line there starts mid-line, so it is dropped)
    [[ -s $f.log ]] && last=$(tail -c 4096 "$f.log" | tr '\r' '\n' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' |
      awk -v cut="$(($(stat -c %s "$f.log") > 4096))" 'NR > cut' | grep -av '^[[:space:]]*$' | awk -F': ' '
        /%\|/ { if (!($1 in bar)) order[n++] = $1; bar[$1] = substr($0, 1, 110); next }
        { other = substr($0, 1, 110) }
        END {
          s = ""
          for (i = 0; i < n; i++) if (bar[order[i]] !~ /100%\|/) s = s (s == "" ? "" : " ; ") bar[order[i]]
          if (s == "") s = (n && other == "") ? bar[order[n - 1]] : other
          print s
        }')
    printf '%-14s %-34s %s\n' "$name" "$state" "$last"
  done
  exit 0
fi
names=()
for j in "${JOBS[@]}"; do names+=("${j%%|*}"); done
for want in "$@"; do
  [[ " ${names[*]} " == *" $want "* ]] || { echo "queue.sh: unknown job '$want' (jobs: ${names[*]})" >&2; exit 2; }
done
[[ -x $PY ]] || { echo "queue.sh: $PY not found; run 'make install' first" >&2; exit 2; }

mkdir -p "$Q/queue"
if alive "$Q/queue/queue.pid"; then
  echo "queue.sh: another queue is running on $Q (pid $(cut -d' ' -f1 "$Q/queue/queue.pid")); see launch/queue.sh --status" >&2
  exit 2
fi
echo "$$ $(date -u +%FT%TZ)" > "$Q/queue/queue.pid"
trap 'rm -f "$Q/queue/queue.pid"' EXIT
renice -n "$NICE" $$ > /dev/null  # the queue and every job it starts
status=0
for j in "${JOBS[@]}"; do
  name=${j%%|*} cmd=${j#*|}
  if (($#)) && [[ " $* " != *" $name "* ]]; then continue; fi
  if [[ -e $Q/queue/$name.done ]]; then echo "=== $name: done before ($Q/queue/$name.done)"; continue; fi
  echo "=== $(date -u +%FT%TZ) $name: $cmd"
  t0=$SECONDS
  echo "$$ $(date -u +%FT%TZ)" > "$Q/queue/$name.running"
  rm -f "$Q/queue/$name.failed"
  run="retry_killed $cmd"  # the shard functions retry each of their processes themselves
  [[ $cmd == *_shards\ * ]] && run=$cmd
  if (eval "$run") >> "$Q/queue/$name.log" 2>&1; then
    date -u +%FT%TZ > "$Q/queue/$name.done"
    echo "=== $(date -u +%FT%TZ) $name: done in $((SECONDS - t0)) s"
  else
    date -u +%FT%TZ > "$Q/queue/$name.failed"
    echo "=== $(date -u +%FT%TZ) $name: FAILED after $((SECONDS - t0)) s (log: $Q/queue/$name.log); later jobs go on"
    status=1
  fi
  rm -f "$Q/queue/$name.running"
done
exit $status
