#!/usr/bin/env bash
# The GPU check: every question's smoke profile on the GPU, a timed slice of the full Q1
# sweeps (generated data at full size, 1 epoch, 1 seed), a YOLOv5s epoch at 416 px on the
# generated detection dataset, then (budget permitting) one Q1 epoch against pure compute
# (and with CUDA graphs), the Q1 speed options and sweep packing on the GPU (our packing,
# and Ray's: 0.25 GPU per cell). Prints images/s and GPU utilisation (nvidia-smi, sampled
# every 0.5 s) per step; stays under 8 minutes on one H100 (a total budget caps every step's
# time-out).
#
#   bench/gpu_check.sh              # on the GPU (fails fast without one)
#   bench/gpu_check.sh --cpu        # the same steps on the CPU at tiny sizes (a rehearsal)
#   bench/gpu_check.sh --dry-run    # print the steps and their commands, run nothing
#
# Environment: GPU_CHECK_ONLY=smoke,yolo416 runs only the steps whose names start with one
# of these; GPU_CHECK_BUDGET_S (default 450 on the GPU, 1200 with --cpu) is the total time
# budget; GPU_CHECK_DIR keeps the stores and logs (default: a temporary folder); PYTHON
# picks the interpreter. Without PREFECT_API_URL one temporary Prefect server serves every
# step. Exit code: 0 every step that ran passed, 1 a step failed or timed out, 2 no GPU.
set -uo pipefail

if [ "${1:-}" = --_flow ]; then  # internal: one flow run, then its images/s
    # --_flow NAME FLOW SAMPLES PROJECT_EPOCHS -- visionflows run arguments
    name=$2 flow=$3 samples=$4 project=$5
    shift 6
    store="file://${GPU_CHECK_DIR:?}/stores/$name"
    "${PYTHON:-python}" -m flows.cli run "$flow" --store "$store" "$@" || exit $?
    extra=()
    [ "$project" -gt 0 ] && extra=(--project-epochs "$project" --project-repeats 3)
    exec "${PYTHON:-python}" -m bench.gpu_report --store "$store" --flow "$flow" \
        --samples "$samples" "${extra[@]}"
fi

MODE=gpu
DRY=0
for arg in "$@"; do
    case "$arg" in
        --cpu) MODE=cpu ;;
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (use --cpu, --dry-run)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 VF_OFFLINE="${VF_OFFLINE:-1}"
export PREFECT_LOGGING_EXTRA_LOGGERS="${PREFECT_LOGGING_EXTRA_LOGGERS:-visionflows}"
PY="${PYTHON:-python}"
ONLY="${GPU_CHECK_ONLY:-}"
if [ "$DRY" = 1 ]; then
    WORK="${GPU_CHECK_DIR:-\$TMPDIR/vf-gpu-check-XXXXXX}"
else
    WORK="${GPU_CHECK_DIR:-$(mktemp -d -t vf-gpu-check-XXXXXX)}"
    mkdir -p "$WORK/logs"
fi
export GPU_CHECK_DIR="$WORK"
VF=("$PY" -m flows.cli run)

if [ "$MODE" = gpu ]; then
    BUDGET="${GPU_CHECK_BUDGET_S:-450}"
    DEV=cuda; YDEV='"0"'  # ultralytics' GPU index, a string (JSON-quoted for --set)
    SMOKE_Q1MLP=(); SMOKE_Q1CNN=(); SMOKE_Q2=(); SMOKE_Q3=(); SMOKE_Q4=()
    N_SMOKE_MLP=3000; N_SMOKE_CNN=2000
    N_FULL=60000; N_FULL_TEST=10000; FULL_MLP=(); FULL_CNN=()  # every cell of the sweeps
    YOLO_N=400; YOLO=(--set imgsz=416 --set data.image_size=416 --set data.n_train=$YOLO_N
                      --set data.n_valid=58 --set workers=8)
    OPTIONS=(--models cnn_pool_bn,mlp --n 20000 --repeats 2)
    EPOCH=(--n 20000 --repeats 3)  # every seed case: MLP b32/64/256, CNN (d), (c) b32
    PACKING=(--parallel 3)
    RAY_PACKING=(--parallel 4 --gpu-share 0.25)  # four cells on the one GPU
    LIMIT_SMOKE=90; LIMIT_FULL=120; LIMIT_YOLO=150; LIMIT_EXTRA=150
else
    BUDGET="${GPU_CHECK_BUDGET_S:-1200}"
    DEV=cpu; YDEV=cpu
    N_SMOKE_MLP=300; N_SMOKE_CNN=200
    SMOKE_Q1MLP=(--set data.n_train=$N_SMOKE_MLP --set data.n_test=100 --set epochs=1)
    SMOKE_Q1CNN=(--set data.n_train=$N_SMOKE_CNN --set data.n_test=100 --set epochs=1
                 --set 'dropouts=[0.0,0.5]')
    SMOKE_Q2=(--set 'models=["resnet18"]' --set epochs=1)
    SMOKE_Q3=(--set 'images=["package:ultralytics/assets/bus.jpg"]')
    SMOKE_Q4=(--set 'models=["yolov5n.yaml"]' --set epochs=1 --set data.n_train=16
              --set data.n_valid=8)
    N_FULL=300; N_FULL_TEST=100
    FULL_MLP=(--set 'batch_sizes=[64,256]' --set 'activations=["relu"]'
              --set 'losses=["cross_entropy"]')
    FULL_CNN=(--set 'dropouts=[0.0]')
    YOLO_N=16; YOLO=(--set imgsz=64 --set data.image_size=64 --set data.n_train=$YOLO_N
                     --set data.n_valid=8 --set batch=8 --set workers=0 --set plots=false)
    OPTIONS=(--models mlp --n 256 --repeats 1 --options bf16)
    EPOCH=(--cases mlp:32,cnn_pool_bn:32 --n 256 --repeats 1)
    PACKING=(--parallel 2)
    RAY_PACKING=(--parallel 2 --gpu-share 0)
    LIMIT_SMOKE=240; LIMIT_FULL=240; LIMIT_YOLO=240; LIMIT_EXTRA=240
fi
GEN=(--set data.source=generate --set data.n_train=$N_FULL --set data.n_test=$N_FULL_TEST
     --set epochs=1 --set repeats=1 --set device=$DEV)

START=$(date +%s)
OK=0; FAILED=0; SKIPPED=0
HAVE_SMI=0
command -v nvidia-smi >/dev/null 2>&1 && HAVE_SMI=1

selected() {  # step name -> 0 when GPU_CHECK_ONLY selects it (or is empty)
    [ -z "$ONLY" ] && return 0
    local tok
    for tok in ${ONLY//,/ }; do
        case "$1" in "$tok"*) return 0 ;; esac
    done
    return 1
}

gpu_stats() {  # sample file -> "GPU util mean X% max Y%, memory max Z MiB"
    if [ "$HAVE_SMI" = 0 ]; then echo "GPU util n/a (no nvidia-smi)"; return; fi
    awk -F', *' 'NF >= 2 && $1 ~ /^[0-9]+$/ { n++; s += $1; if ($1 > m) m = $1;
                                              if ($2 > mem) mem = $2 }
        END { if (n) printf "GPU util mean %.0f%% max %d%% (%d samples), memory max %d MiB\n",
                            s / n, m, n, mem;
              else print "GPU util n/a (no samples)" }' "$1"
}

# step NAME LIMIT_S MIN_S -- COMMAND...: run COMMAND with a time-out of min(LIMIT_S, what
# is left of the budget), skip it when less than MIN_S is left; its output goes to a log,
# its RESULT / IMAGES / THROUGHPUT / PROJECTED lines to the console.
step() {
    local name=$1 limit=$2 min=$3
    shift 4
    selected "$name" || return 0
    local elapsed=$(( $(date +%s) - START )) left t
    left=$(( BUDGET - elapsed ))
    t=$(( limit < left ? limit : left ))
    if [ "$DRY" = 1 ]; then
        printf 'STEP %s (time-out %ss):' "$name" "$limit"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    if [ "$t" -lt "$min" ]; then
        echo "STEP $name SKIPPED: ${left}s of the ${BUDGET}s budget left (needs ${min}s)"
        SKIPPED=$((SKIPPED + 1)); return 0
    fi
    local log="$WORK/logs/$name.log" smi="$WORK/logs/$name.smi" pid="" rc t0 t1
    echo "== $name (time-out ${t}s): $*"
    if [ "$HAVE_SMI" = 1 ]; then
        nvidia-smi -i 0 --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits \
            -lms 500 > "$smi" 2>/dev/null &
        pid=$!
    else
        : > "$smi"
    fi
    t0=$(date +%s.%N)
    timeout --kill-after=15 "$t" "$@" > "$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    grep -E '^(RESULT|IMAGES|THROUGHPUT|PROJECTED)' "$log" | sed 's/^/   /'
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" = 0 ]; then
        echo "STEP $name ok in ${wall}s | $(gpu_stats "$smi")"
        OK=$((OK + 1))
    else
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && rc="$rc (timed out after ${t}s)"
        echo "STEP $name FAILED rc=$rc in ${wall}s | $(gpu_stats "$smi"); last lines of $log:"
        tail -n 25 "$log" | sed 's/^/   | /'
        FAILED=$((FAILED + 1))
    fi
}

FLOW=("$BASH" "$0" --_flow)  # a flow run, then its images/s (see the top of this file)

cleanup() {
    if [ -n "${SERVER_PID:-}" ]; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=""
    fi
}
trap cleanup EXIT

echo "gpu_check: mode $MODE, budget ${BUDGET}s, work dir $WORK${ONLY:+, only: $ONLY}"
if [ "$DRY" = 0 ]; then
    if [ "$HAVE_SMI" = 1 ]; then
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
            | sed 's/^/GPU /'
    fi
    "$PY" - "$MODE" <<'EOF' || exit 2
import sys

import torch

gpu = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA available: {gpu}"
      + (f", device 0: {torch.cuda.get_device_name(0)}" if gpu else "")
      + f", CPU threads {torch.get_num_threads()}")
if sys.argv[1] == "gpu" and not gpu:
    print("no CUDA device visible to torch: nothing to check here (use --cpu to rehearse "
          "the same steps on the CPU)", file=sys.stderr)
    sys.exit(2)
EOF
    if [ -z "${PREFECT_API_URL:-}" ]; then
        PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0));
print(s.getsockname()[1])')
        # its own process group (setsid), so the clean-up ends its uvicorn child too
        PREFECT_HOME="$WORK/prefect" setsid "$PY" -m prefect server start --host 127.0.0.1 \
            --port "$PORT" > "$WORK/logs/prefect-server.log" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 1 120); do
            if "$PY" -c "import sys, urllib.request as u
sys.exit(0 if u.urlopen('http://127.0.0.1:$PORT/api/health', timeout=2).status == 200 else 1)" \
                2>/dev/null; then
                export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
                break
            fi
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.5
        done
        if [ -n "${PREFECT_API_URL:-}" ]; then
            echo "Prefect server for every step: $PREFECT_API_URL ($(( $(date +%s) - START ))s)"
        else
            echo "Prefect server did not start (see $WORK/logs/prefect-server.log): each flow" \
                 "starts its own temporary one"
            cleanup
        fi
    fi
fi

# 1. every question's smoke profile on the device
step smoke-q1-mlp "$LIMIT_SMOKE" 20 -- "${FLOW[@]}" smoke-q1-mlp q1-mlp "$N_SMOKE_MLP" 0 \
    -- --profile smoke --set device=$DEV "${SMOKE_Q1MLP[@]}"
step smoke-q1-cnn "$LIMIT_SMOKE" 20 -- "${FLOW[@]}" smoke-q1-cnn q1-cnn "$N_SMOKE_CNN" 0 \
    -- --profile smoke --set device=$DEV "${SMOKE_Q1CNN[@]}"
step smoke-q2 "$LIMIT_SMOKE" 20 -- "${VF[@]}" q2-transfer --store "file://$WORK/stores/q2" \
    --profile smoke --set device=$DEV "${SMOKE_Q2[@]}"
step smoke-q3 "$LIMIT_SMOKE" 20 -- "${VF[@]}" q3-segmentation --store "file://$WORK/stores/q3" \
    --profile smoke --set device=$DEV "${SMOKE_Q3[@]}"
step smoke-q4 "$LIMIT_SMOKE" 30 -- "${VF[@]}" q4-yolo --store "file://$WORK/stores/q4" \
    --profile smoke --set device=$YDEV "${SMOKE_Q4[@]}"
# 2. a timed slice of the full Q1 sweeps: every cell, full-size data, 1 epoch, 1 seed; the
#    projection scales it to the full profile's 10 epochs x 3 seeds
step full-q1-mlp "$LIMIT_FULL" 30 -- "${FLOW[@]}" full-q1-mlp q1-mlp "$N_FULL" 10 \
    -- --profile full "${GEN[@]}" "${FULL_MLP[@]}"
step full-q1-cnn "$LIMIT_FULL" 30 -- "${FLOW[@]}" full-q1-cnn q1-cnn "$N_FULL" 10 \
    -- --profile full "${GEN[@]}" "${FULL_CNN[@]}"
# 3. one YOLOv5s epoch at 416 px on the generated detection dataset (from its yaml: the same
#    network and compute as the pretrained weights, which this machine may not have)
step yolo416 "$LIMIT_YOLO" 40 -- "${FLOW[@]}" yolo416 q4-yolo "$YOLO_N" 0 \
    -- --profile full --set data.source=generate --set data.location=null \
    --set 'models=["yolov5s.yaml"]' \
    --set epochs=1 --set device=$YDEV "${YOLO[@]}"
# 4. extras when the budget allows: one Q1 epoch, ours / pure compute / plain loop (and on
#    CUDA ours with cuda_graphs); speed options; sweep packing, measured on the device
step q1-epoch "$LIMIT_EXTRA" 60 -- "$PY" -m bench.q1_epoch --device $DEV "${EPOCH[@]}"
step q1-options "$LIMIT_EXTRA" 60 -- "$PY" -m bench.q1_options --device $DEV "${OPTIONS[@]}"
step q1-packing "$LIMIT_EXTRA" 60 -- "$PY" -m bench.q1_packing --flow q1-mlp --profile full \
    "${GEN[@]}" "${FULL_MLP[@]}" "${PACKING[@]}"
# the same sweep packed on the one GPU by Ray (0.25 GPU per cell) vs one cell at a time:
# images/s and GPU utilisation of each (needs the [ray] extra; says so and passes without)
step q1-ray-packing "$LIMIT_EXTRA" 90 -- "$PY" -m bench.fanout --flow q1-mlp --profile full \
    "${GEN[@]}" "${FULL_MLP[@]}" --only sweep --runners seq,ray "${RAY_PACKING[@]}"

if [ "$DRY" = 0 ]; then
    echo "TOTAL $(( $(date +%s) - START ))s (budget ${BUDGET}s): $OK ok, $FAILED failed," \
         "$SKIPPED skipped; logs in $WORK/logs"
fi
[ "$FAILED" = 0 ] || exit 1
exit 0
