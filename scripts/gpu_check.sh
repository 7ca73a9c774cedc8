#!/usr/bin/env bash
# The prepared one-call check of the CUDA kernels, the tiled layer and the LM on an NVIDIA GPU (issue 25).
#
#   scripts/gpu_check.sh [--dry-run] [--check-only] [--deadline SECONDS] [--steps 1,2,...] OUTDIR
#
# One call of at most --deadline seconds (default 510, under the device tool's 9 minutes for this check):
# every step runs under its own `timeout`, capped by what is left of the deadline less a reserve for the
# summary, so the script stops itself in time; a step that no longer fits is skipped and says so.
#   1  environment: GPU, driver, torch and CUDA versions, nvcc, free memory, packages
#   2  build the CUDA (and CPU) scan extensions through tiling/_build.py for the chip found
#      (TORCH_CUDA_ARCH_LIST=9.0 on an H100/H200), ninja, MAX_JOBS = all cores; the build time
#      (and starts step 7's peer build in the background)
#   3  the CUDA tests (GPU_CHECK_TESTS): the scan kernel, the block-scope and scan-scope layers on CPU and
#      CUDA, kernel_available, the LM (tests/tiling/test_lm_cuda.py)
#   4  compute-sanitizer memcheck and racecheck on one small forward + backward of the scan
#   5  scripts/bench_scan.py, bench_layer.py, bench_text.py with --device cuda --json, each under a cap
#   7  the peer: mamba_ssm's selective_scan_fn built from its sdist (.gpu/sdist), timed at bench_scan's
#      shapes when it built in time; else the H100 figures measured elsewhere
#   8  ncu (--clock-control none) on the scan kernels at the goal shape: bf16 (8, 1536, 4096, 16)
#   6  last, if time remains: 3 minutes of training on the GPU, router+ends at 0.25 (the best real-text
#      row) and full resolution (scripts/train_text.py --max-minutes 3 --clock wall)
# (in this order: 6 runs last, as it needs the most time and serves no goal)
# Without a GPU (or with --dry-run) it is a dry run: it prints each step, runs those that need no GPU
# (environment, test collection, the bench_text runs folder, the corpus, unpacking the sdist) and checks
# that every file, command and flag it names exists; --check-only stops after those checks.
#
# Everything goes to OUTDIR (new or empty), at most 8 files so that all of it comes back from the device
# tool's $OUT: console.log, summary.txt, summary.json (steps, goals), env.json, bench_scan.json,
# bench_layer.json, bench_text.json and gpu_check.tar.gz (every log and JSON of the run).
# Exit status: 0 all ran and passed, 1 something failed or is missing, 2 bad usage.
#
# Environment (defaults in brackets; the tests point them elsewhere):
#   GPU_CHECK_PYTHON [.venv/bin/python, else python3]   GPU_CHECK_TESTS [the targets of step 3]
#   GPU_CHECK_BENCH_SCAN, _BENCH_LAYER, _BENCH_TEXT, _TRAIN_TEXT [scripts/<name>.py]
#   GPU_CHECK_SDIST [.gpu/sdist/mamba_ssm-*.tar.gz]     GPU_CHECK_CORPUS [data/corpus; else the bundled slice]
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START=$(date +%s)
DEADLINE=510
RESERVE=20
STEPS=1,2,3,4,5,6,7,8
MODE=auto
OUTDIR=

usage_error() { echo "error: $* (usage: scripts/gpu_check.sh [--dry-run] [--check-only] [--deadline SECONDS] [--steps 1,2,...] OUTDIR)" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) [ "$MODE" = check ] || MODE=dry ;;
    --check-only) MODE=check ;;
    --deadline) [ $# -ge 2 ] || usage_error "--deadline needs a number of seconds"; DEADLINE=$2; shift ;;
    --deadline=*) DEADLINE=${1#*=} ;;
    --steps) [ $# -ge 2 ] || usage_error "--steps needs a comma-separated list of step numbers 1-8"; STEPS=$2; shift ;;
    --steps=*) STEPS=${1#*=} ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) usage_error "unknown option $1" ;;
    *) [ -z "$OUTDIR" ] || usage_error "one OUTDIR, got '$OUTDIR' and '$1'"; OUTDIR=$1 ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || usage_error "OUTDIR is required, a new or empty folder"
[[ "$DEADLINE" =~ ^[0-9]+$ ]] && [ "$DEADLINE" -ge 60 ] && [ "$DEADLINE" -le 3600 ] \
  || usage_error "--deadline must be a whole number of seconds in [60, 3600], got '$DEADLINE'"
[[ "$STEPS" =~ ^[1-8](,[1-8])*$ ]] || usage_error "--steps must be a comma-separated list of step numbers 1-8, got '$STEPS'"
if [ -e "$OUTDIR" ] && [ -n "$(ls -A "$OUTDIR" 2>/dev/null)" ]; then
  usage_error "OUTDIR $OUTDIR is not empty: gpu_check.sh writes only into a new or empty folder"
fi
mkdir -p "$OUTDIR" || usage_error "cannot create OUTDIR $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
W=$OUTDIR/work
mkdir -p "$W/help" "$W/tests"
exec 3>&1 4>&2
exec > >(tee -a "$OUTDIR/console.log") 2>&1
TEE_PID=$!

cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HYPOTHESIS_PROFILE=ci
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TILING_FORCE_REFERENCE
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
TESTS=${GPU_CHECK_TESTS:-tests/kernels/test_scan_cuda.py tests/tiling/test_block_scope.py::test_cpu_and_cuda_agree tests/tiling/test_tiled_mamba.py::test_cpu_and_cuda_agree tests/kernels/test_kernel_available.py tests/tiling/test_lm_cuda.py}
BENCH_SCAN=${GPU_CHECK_BENCH_SCAN:-scripts/bench_scan.py}
BENCH_LAYER=${GPU_CHECK_BENCH_LAYER:-scripts/bench_layer.py}
BENCH_TEXT=${GPU_CHECK_BENCH_TEXT:-scripts/bench_text.py}
TRAIN_TEXT=${GPU_CHECK_TRAIN_TEXT:-scripts/train_text.py}
TOOLS=scripts/gpu_check_tools.py
PEER=scripts/peer_mamba_ssm.py
SDIST=${GPU_CHECK_SDIST:-$(ls "$ROOT"/.gpu/sdist/mamba_ssm-*.tar.gz 2>/dev/null | head -1)}
SDIST=${SDIST:-.gpu/sdist/mamba_ssm-2.3.2.post1.tar.gz}
CORPUS=${GPU_CHECK_CORPUS:-data/corpus}
#: flags each script must accept (checked against its --help)
declare -A FLAGS=(
  [$BENCH_SCAN]="--device --json --repeats"
  [$BENCH_LAYER]="--device --json --repeats"
  [$BENCH_TEXT]="--device --json --d-model --rounds --no-hf-batch"
  [$TRAIN_TEXT]="--device --config --budget --full-layers --seed --max-minutes --clock --out --corpus-dir --test-bytes --decode-bytes"
)
FILES="kernels_cuda/scan_fwd.cu kernels_cuda/scan_bwd.cu kernels_cuda/scan_cuda.cpp kernels_cuda/scan_params.h
kernels_cuda/binding.h kernels_cuda/scan_cpu.cpp tiling/_build.py tests/reference/scan_inputs.py $TOOLS $PEER
docs/results/text_lm.json tiling/train/checkpoints/text_full.safetensors tiling/train/checkpoints/text_adaptive.safetensors
tiling/train/data/python-doc"

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( DEADLINE - $(elapsed) )); }
say() { printf '[%4ds] %s\n' "$(elapsed)" "$*"; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }
MISSING=()
missing() { MISSING+=("$*"); say "  MISSING $*"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$W/steps.tsv"; }  # step name status seconds note

# run_step STEP NAME CAP MIN LOG show -- CMD...: CMD under `timeout min(CAP, left - RESERVE)`; skipped when
# less than MIN seconds fit. show: "stream" (output to the console too) or a number of log lines shown after.
run_step() {
  local step=$1 name=$2 cap=$3 min=$4 log=$5 show=$6; shift 7
  local t=$(( $(left) - RESERVE )); [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt "$min" ]; then
    say "step $step $name: SKIP (time: $t s left for it, needs $min)"; record "$step" "$name" skip 0 "time"; return 3
  fi
  say "step $step $name: start (cap $t s) -> ${log#$OUTDIR/}"
  say "  \$ $*"
  local t0=$(date +%s) rc
  if [ "$show" = stream ]; then
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$log"; rc=$?
  else
    timeout --kill-after=10 "$t" "$@" > "$log" 2>&1; rc=$?
    tail -n "$show" "$log" | sed 's/^/  | /'
  fi
  local dt=$(( $(date +%s) - t0 )) status=ok
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status=timeout
  [ "$rc" -ne 0 ] && [ "$status" = ok ] && status=fail
  say "step $step $name: $status (rc $rc, $dt s)"
  record "$step" "$name" "$status" "$dt" "rc $rc; ${log#$OUTDIR/}"
  return "$rc"
}

PEER_PID=
FINISHED=0
finish() {
  [ "$FINISHED" = 1 ] && return; FINISHED=1
  if [ -n "$PEER_PID" ] && kill -0 "$PEER_PID" 2>/dev/null; then
    say "step 7 peer build: still running at the end; stopped"; kill -TERM "$PEER_PID" 2>/dev/null
  fi
  printf '%s\n' "${MISSING[@]}" > "$W/missing.txt"
  "$PY" "$TOOLS" summary --work "$W" --out "$OUTDIR" --mode "$MODE" --elapsed "$(elapsed)" --deadline "$DEADLINE" \
    || { say "summary failed; steps:"; cat "$W/steps.tsv"; }
  for f in env.json bench_scan.json bench_layer.json bench_text.json; do [ -f "$W/$f" ] && cp "$W/$f" "$OUTDIR/$f"; done
  tar -czf "$OUTDIR/gpu_check.tar.gz" -C "$OUTDIR" --exclude='*.safetensors' --exclude='*.so' --exclude='*.o' work \
    && rm -rf "$W"
  say "done in $(elapsed) s: $(ls "$OUTDIR" | tr '\n' ' ')"
  exec 1>&3 2>&4  # the console log's tee gets its end of file: every line is written before the script returns
  wait "$TEE_PID" 2>/dev/null
}
trap 'finish' EXIT
trap 'say "stopped by a signal"; exit 143' TERM INT

# ---------------------------------------------------------------------------------------------- mode
have_gpu() {
  command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1 \
    && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null
}
if [ "$MODE" = auto ]; then
  if have_gpu; then MODE=gpu; else MODE=dry; say "no GPU found (nvidia-smi / torch.cuda): a dry run"; fi
fi
say "gpu_check.sh: mode $MODE, steps $STEPS, deadline $DEADLINE s, OUTDIR $OUTDIR, python $PY, repo $ROOT"
: > "$W/steps.tsv"

if [ "$MODE" = gpu ]; then
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$ROOT/.gpu/build/torch_extensions}
  ARCH=$("$PY" "$TOOLS" arch 2>/dev/null)
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${ARCH:-9.0}}
  PEER_SITE=$ROOT/.gpu/build/peer
  if ! command -v ninja > /dev/null; then
    NINJA_BIN=$("$PY" -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null) && export PATH="$NINJA_BIN:$PATH"
  fi
else
  PEER_SITE=$W/peer_site
fi

# ---------------------------------------------------------------------------------------------- checks
say "checks: every file, command and flag this run names"
for f in $FILES; do
  if [ -e "$f" ]; then say "  ok      file $f"; else missing "file $f"; fi
done
for t in $TESTS; do
  if [ -f "${t%%::*}" ]; then say "  ok      test $t"; else missing "file ${t%%::*} (test target $t)"; fi
done
if [ -f "$SDIST" ]; then say "  ok      sdist $SDIST"
else missing "file $SDIST (the mamba-ssm sdist: pip download mamba-ssm==2.3.2.post1 --no-deps --no-binary :all: --no-build-isolation -d .gpu/sdist)"; fi
if [ -f "$CORPUS/train.txt" ]; then say "  ok      corpus $CORPUS"
else say "  absent  corpus $CORPUS (make corpus; carry it): step 5/6 use the bundled slice tiling/train/data/python-doc"; fi
if TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null); then say "  ok      command $PY (torch $TORCH_VERSION)"
else missing "command $PY with torch"; fi
for c in timeout tar; do command -v "$c" > /dev/null && say "  ok      command $c" || missing "command $c"; done
for c in ninja nvcc compute-sanitizer ncu nvidia-smi; do
  if command -v "$c" > /dev/null; then say "  ok      command $c ($(command -v "$c"))"
  elif [ "$MODE" = gpu ]; then missing "command $c"
  else say "  absent  command $c (needed on the GPU machine only)"; fi
done
HELP_PIDS=()
for s in "${!FLAGS[@]}"; do  # the --help of every script, in parallel
  h=$W/help/$(basename "$s").txt
  if [ -f "$s" ]; then (timeout 120 "$PY" "$s" --help > "$h" 2>&1; echo $? > "$h.rc") & HELP_PIDS+=($!); else missing "file $s"; fi
done
[ ${#HELP_PIDS[@]} -eq 0 ] || wait "${HELP_PIDS[@]}"  # (a bare `wait` would also wait for the console's tee)
for s in "${!FLAGS[@]}"; do
  h=$W/help/$(basename "$s").txt
  [ -f "$s" ] || continue
  if [ "$(cat "$h.rc" 2>/dev/null)" != 0 ]; then missing "$s --help failed: $(tail -n 1 "$h")"; continue; fi
  for fl in ${FLAGS[$s]}; do
    if grep -Eq -- "(^|[^A-Za-z0-9_-])$fl([^A-Za-z0-9_-]|\$)" "$h"; then say "  ok      flag $s $fl"
    else missing "flag $s $fl (its --help has no such option)"; fi
  done
done
has_flag() { grep -Eq -- "(^|[^A-Za-z0-9_-])$2([^A-Za-z0-9_-]|\$)" "$W/help/$(basename "$1").txt" 2>/dev/null; }
missing_in() { local m; for m in "${MISSING[@]}"; do [[ "$m" == *"$1"* ]] && return 0; done; return 1; }
record 0 checks "$([ ${#MISSING[@]} -eq 0 ] && echo ok || echo missing)" "$(elapsed)" "${#MISSING[@]} missing"
if [ "$MODE" = check ]; then exit $(( ${#MISSING[@]} > 0 )); fi

# corpus for steps 5 and 6: the carried one, else the bundled slice prepared here (no GPU needed)
if [ ! -f "$CORPUS/train.txt" ] && { want 5 || want 6; }; then
  run_step 5 corpus 60 5 "$W/corpus.log" 4 -- "$PY" -m tiling.train.corpus --out "$W/corpus" --source tiling/train/data/python-doc
  CORPUS=$W/corpus
fi

# ---------------------------------------------------------------------------------------------- 1 environment
if want 1 || [ "$MODE" = gpu ]; then
  run_step 1 environment 60 10 "$W/env.log" stream -- "$PY" "$TOOLS" env --json "$W/env.json"
  [ "$MODE" = gpu ] && say "  TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR"
fi

# ---------------------------------------------------------------------------------------------- 2 build (+ the peer in the background)
BUILD_OK=0
if want 7 && [ -f "$SDIST" ]; then
  if [ "$MODE" = gpu ]; then
    PEER_CAP=$(( $(left) - RESERVE - 60 ))
    say "step 7 peer build: start in the background (cap $PEER_CAP s) -> work/peer_build.log"
    timeout --kill-after=10 "$PEER_CAP" "$PY" "$PEER" build --sdist "$SDIST" --site "$PEER_SITE" > "$W/peer_build.log" 2>&1 &
    PEER_PID=$!
    PEER_T0=$(date +%s)
  else
    run_step 7 peer-unpack 60 5 "$W/peer_build.log" 4 -- "$PY" "$PEER" build --sdist "$SDIST" --site "$PEER_SITE" --dry-run
  fi
fi
if want 2; then
  if [ "$MODE" = gpu ]; then
    run_step 2 build 300 30 "$W/build.log" 6 -- "$PY" "$TOOLS" build && BUILD_OK=1
  else
    run_step 2 build 60 5 "$W/build.log" stream -- "$PY" "$TOOLS" build --dry-run
  fi
elif [ "$MODE" = gpu ]; then
  BUILD_OK=1  # a rerun without step 2: the cache of the first call is used (a failed build shows in step 3)
fi

# ---------------------------------------------------------------------------------------------- 3 tests
if want 3; then
  if [ "$MODE" = gpu ]; then
    for t in $TESTS; do
      [ -f "${t%%::*}" ] || { record 3 "test $t" missing 0 "no such file"; continue; }
      f=${t%%::*}; name=$(basename "$f" .py); [ "$t" != "$f" ] && name=${name}__${t##*::}
      cap=120; [[ "$t" == *test_scan_cuda* ]] && cap=200
      run_step 3 "test $t" "$cap" 20 "$W/tests/$name.log" stream -- \
        "$PY" -m pytest -q -rfE --durations=5 -p no:cacheprovider "$t" --junitxml="$W/tests/$name.xml"
    done
  else
    run_step 3 "collect tests" 120 10 "$W/tests/collect.log" 8 -- "$PY" -m pytest -q --collect-only -p no:cacheprovider $TESTS
    rc=$?  # 124/137: timed out (a failed step); 3: skipped for time
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && [ "$rc" -ne 3 ]; then
      missing "tests that do not collect (work/tests/collect.log): $(grep -E 'ERROR|not found' "$W/tests/collect.log" | head -3 | tr '\n' ' ')"
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------- 4 sanitizer
if want 4; then
  for tool in memcheck racecheck; do
    if [ "$MODE" = gpu ] && [ "$BUILD_OK" = 1 ] && command -v compute-sanitizer > /dev/null; then
      run_step 4 "sanitizer $tool" 150 30 "$W/sanitizer_$tool.log" 12 -- \
        compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 3 "$PY" "$TOOLS" scan-once
    elif [ "$MODE" = gpu ]; then
      say "step 4 sanitizer $tool: SKIP (build failed or no compute-sanitizer)"; record 4 "sanitizer $tool" skip 0 "no build or tool"
    else
      say "step 4 would run: compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 3 $PY $TOOLS scan-once"
    fi
  done
fi

# ---------------------------------------------------------------------------------------------- 5 benchmarks
peer_ready() { ls "$PEER_SITE"/selective_scan_cuda*.so > /dev/null 2>&1 && ! { [ -n "$PEER_PID" ] && kill -0 "$PEER_PID" 2>/dev/null; }; }
bench() {  # bench SCRIPT NAME CAP EXTRA...: one benchmark with --device cuda --json, or why not
  local s=$1 name=$2 cap=$3; shift 3
  if missing_in "$s"; then
    say "step 5 $name: SKIP ($s lacks a file or flag it needs: $(printf '%s; ' "${MISSING[@]}" | grep -o "[^;]*$s[^;]*" | head -2 | tr '\n' ' '))"
    record 5 "$name" missing 0 "$s lacks what it needs"
  elif [ "$MODE" != gpu ]; then
    say "step 5 would run: $PY $s --device cuda --json work/$name.json $*"
  elif [ "$BUILD_OK" != 1 ]; then
    say "step 5 $name: SKIP (the CUDA extension did not build: it would time the reference)"; record 5 "$name" skip 0 "no build"
  else
    run_step 5 "$name" "$cap" 30 "$W/$name.log" stream -- "$PY" "$s" --device cuda --json "$W/$name.json" "$@"
  fi
}
if want 5; then
  if [ "$MODE" = gpu ] && [ -n "$PEER_PID" ]; then  # the peer in the same table, if it builds in time
    wait_s=$(( $(left) - RESERVE - 300 )); [ "$wait_s" -gt 120 ] && wait_s=120
    [ "$wait_s" -gt 0 ] && kill -0 "$PEER_PID" 2>/dev/null \
      && say "step 5: waiting up to $wait_s s for the peer build (running $(( $(date +%s) - PEER_T0 )) s)"
    while [ "$wait_s" -gt 0 ] && kill -0 "$PEER_PID" 2>/dev/null; do sleep 5; wait_s=$(( wait_s - 5 )); done
  fi
  if [ "$MODE" = gpu ] && peer_ready; then
    say "step 5: mamba_ssm built: bench_scan times it in the same run"
    PYTHONPATH="$PEER_SITE:$PYTHONPATH" bench "$BENCH_SCAN" bench_scan 200
  else
    bench "$BENCH_SCAN" bench_scan 200
  fi
  bench "$BENCH_LAYER" bench_layer 150
  bench "$BENCH_TEXT" bench_text 150 --d-model 256 512 --rounds 3 --no-hf-batch
fi

# ---------------------------------------------------------------------------------------------- 7 the peer
if want 7; then
  if [ "$MODE" != gpu ]; then
    say "step 7 would build mamba_ssm's selective_scan_cuda for sm_90 in the background (from step 2) and run: $PY $PEER bench --site $PEER_SITE"
  elif [ -z "$PEER_PID" ]; then
    say "step 7 peer: not built (no sdist $SDIST)"; record 7 peer missing 0 "no sdist"
  else
    if kill -0 "$PEER_PID" 2>/dev/null; then rc=running; else wait "$PEER_PID"; rc=$?; fi
    built=$(grep -o 'built selective_scan_cuda in [0-9]* s' "$W/peer_build.log")
    say "step 7 peer build: $([ "$rc" = running ] && echo "still running after $(( $(date +%s) - PEER_T0 )) s" \
      || echo "ended, rc $rc${built:+, $built}"); log tail:"; tail -n 5 "$W/peer_build.log" | sed 's/^/  | /'
    if peer_ready; then
      record 7 "peer build" ok "${built//[^0-9]/}" "work/peer_build.log"
      run_step 7 "peer bench" 150 40 "$W/peer_bench.log" stream -- "$PY" "$PEER" bench --site "$PEER_SITE" --json "$W/peer_bench.json"
    else
      record 7 "peer build" "$([ "$rc" = running ] && echo timeout || echo fail)" "$(( $(date +%s) - PEER_T0 ))" \
        "rc $rc, no selective_scan_cuda built (work/peer_build.log); summary: mamba_ssm figures measured elsewhere"
    fi
  fi
fi
# ---------------------------------------------------------------------------------------------- 8 profile
if want 8; then
  NCU=(ncu --clock-control none --kernel-name regex:'scan_(fwd|bwd)_kernel' --launch-count 4 --section SpeedOfLight --section Occupancy
       --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats)
  if [ "$MODE" != gpu ]; then
    say "step 8 would run: ${NCU[*]} $PY $TOOLS profile-once"
  elif [ "$BUILD_OK" = 1 ] && command -v ncu > /dev/null; then
    run_step 8 "ncu profile" 120 45 "$W/ncu_profile.log" 40 -- "${NCU[@]}" "$PY" "$TOOLS" profile-once
  else
    say "step 8 ncu profile: SKIP (no build or no ncu)"; record 8 "ncu profile" skip 0 "no build or tool"
  fi
fi

# ---------------------------------------------------------------------------------------------- 6 training
if want 6; then
  for spec in "router+ends_b0.25:--config router --full-layers ends --budget 0.25" "full_b1:--config full --budget 1"; do
    name=${spec%%:*}; read -r -a targs <<< "${spec#*:}"
    cmd=("$PY" "$TRAIN_TEXT" --device cuda "${targs[@]}" --seed 0 --max-minutes 3 --clock wall
         --corpus-dir "$CORPUS" --out "$W/train/$name" --test-bytes 131072 --decode-bytes 64)
    if missing_in "$TRAIN_TEXT"; then
      say "step 6 train $name: SKIP ($TRAIN_TEXT lacks a flag it needs, see MISSING)"; record 6 "train $name" missing 0 "flags"
    elif [ "$MODE" != gpu ]; then
      say "step 6 would run (if 4+ minutes remain): ${cmd[*]}"
    else
      run_step 6 "train $name" 290 250 "$W/train_$name.log" 15 -- "${cmd[@]}"
    fi
  done
  [ "$MODE" = gpu ] && ls -d "$W"/train/*/ > /dev/null 2>&1 && "$PY" "$TOOLS" train-summary "$W"/train/*/ | tee "$W/train_summary.txt"
fi

FAILED=$(awk -F'\t' '$3=="fail"||$3=="timeout"||$3=="missing"' "$W/steps.tsv" | wc -l)
[ ${#MISSING[@]} -eq 0 ] && [ "$FAILED" -eq 0 ]
exit $?
