#!/usr/bin/env bash
# The CUDA paths of pspnet that no CPU run exercises, checked on one GPU in under 8 minutes.
#
#   bash bench/gpu_check.sh                 # on a machine with one CUDA GPU
#   bash bench/gpu_check.sh --python python3  # a GPU machine whose Python has a CUDA torch
#   bash bench/gpu_check.sh --dry-run       # anywhere: syntax, options, every path on the CPU
#
# Installs what it needs into .venv (torch pinned to $TORCH_VERSION from $TORCH_INDEX, a CUDA
# build; pspnet editable with the onnx extra), or with --python uses that interpreter as it is
# (no package index needed: pspnet runs from src/, its dependencies must be importable there),
# then runs each path in its own subshell under
# its own timeout, so one failure does not hide the others:
#   train-bf16 / train-fp16   training steps with autocast (fp16: with a GradScaler)
#   train-channels-last       a bf16 step with channels-last activations and weights
#   ddp-syncbn                a 1-process torchrun job: nccl, SyncBatchNorm, DDP
#   resume                    a run continued from its checkpoint (optimizer, scaler state)
#   compile-inference         load_model(..., compile=True) in fp32 and bf16 + predict_labels
#   benchmark                 pspnet benchmark at 473 and 713, fp32 / bf16 / fp16
#   onnxruntime-cuda          an ONNX export run with ONNX Runtime's CUDA provider (if present)
# and writes one Markdown table (--out, default gpu_check.md) plus a PASS/FAIL/SKIP line per
# path on stdout. Exit status: 0 when no path failed.
#
# --dry-run checks this script's syntax (bash -n) and options, and runs every path's command
# on the CPU with tiny sizes (fp32 where the CPU cannot do the GPU's arithmetic: fp16 needs
# CUDA; compile and the benchmark with the smallest model) using the Python already on PATH
# (or --python, or $PYTHON); nothing is installed.
set -uo pipefail

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  echo "options: --dry-run  --python PY  --out FILE  --only NAME[,NAME...]  --keep  -h|--help"
}

DRY=0
OUT=gpu_check.md
ONLY=""
KEEP=0
GIVEN_PY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a file name" >&2; exit 2; }; OUT="$2"; shift ;;
    --only) [ $# -ge 2 ] || { echo "error: --only needs path names" >&2; exit 2; }; ONLY="$2"; shift ;;
    --python) [ $# -ge 2 ] || { echo "error: --python needs an interpreter" >&2; exit 2; }; GIVEN_PY="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PATHS="train-bf16 train-fp16 train-channels-last ddp-syncbn resume compile-inference benchmark onnxruntime-cuda"
for name in ${ONLY//,/ }; do
  case " $PATHS " in *" $name "*) ;; *) echo "error: --only: unknown path $name; choose from: $PATHS" >&2; exit 2 ;; esac
done

# Syntax first: a script that does not parse must not half-run.
bash -n "$0" || { echo "error: $0 does not parse" >&2; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 2
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT

if [ "$DRY" = 1 ]; then
  PY="${GIVEN_PY:-${PYTHON:-python}}"
  DEVICE=cpu
  export CUDA_VISIBLE_DEVICES=""
elif [ -n "$GIVEN_PY" ]; then
  PY="$GIVEN_PY"
  "$PY" -c "import torch; print('using', torch.__version__, 'with CUDA', torch.version.cuda)" \
    || { echo "error: --python $PY cannot import torch" >&2; exit 2; }
  missing=$("$PY" -c "
import importlib.util
print(' '.join(m for m in ('numpy', 'PIL', 'safetensors', 'yaml', 'tqdm') if importlib.util.find_spec(m) is None))")
  if [ -n "$missing" ]; then
    echo "error: --python $PY lacks pspnet's dependencies: $missing (install them, or drop --python to use .venv)" >&2
    exit 2
  fi
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 1 else 1)"; then
    echo "error: no CUDA GPU visible to torch in $PY; run with --dry-run on a CPU" >&2
    exit 2
  fi
  DEVICE=cuda
else
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv || exit 2; fi
  PY=.venv/bin/python
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') and torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "installing torch==$TORCH_VERSION from $TORCH_INDEX into .venv"
    "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX" || exit 2
  fi
  "$PY" -m pip install -q -e ".[onnx]" || "$PY" -m pip install -q -e . || exit 2
  "$PY" -c "import onnxruntime" 2>/dev/null && ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null \
    && "$PY" -m pip install -q onnxruntime-gpu 2>/dev/null
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 1 else 1)"; then
    echo "error: no CUDA GPU visible to torch in .venv; run with --dry-run on a CPU" >&2
    exit 2
  fi
  DEVICE=cuda
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

# Tiny sizes in a dry run, the real ones on the GPU.
if [ "$DRY" = 1 ]; then
  CROP=48; STEPS=2; SIZES="65"; BENCH_ARCH=pspnet_r18; VARIANTS="fp32-eager fp32-folded"
  LOW=fp32; T_TRAIN=900; T_COMPILE=900; T_BENCH=900  # a loaded CPU is slow; the GPU limits are below
else
  CROP=256; STEPS=10; SIZES="473 713"; BENCH_ARCH=pspnet50
  # Compiled fp32 too: bf16/fp16 are compared with it for speed and GPU memory (each compile: ~10 s on an H200).
  VARIANTS="fp32-eager fp32-folded fp32-compile bf16-folded fp16-folded bf16-compile fp16-compile"
  LOW=fp16; T_TRAIN=120; T_COMPILE=240; T_BENCH=300  # compile: three precisions
fi

# A small labelled data set on disk (4 classes, blocks of colour), shared by the training paths.
"$PY" - "$WORK/data" <<'EOF' || { echo "error: could not write the test data" >&2; exit 2; }
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1]); (root / "img").mkdir(parents=True); (root / "lab").mkdir()
rng = np.random.default_rng(0)
lines = []
for i in range(8):
    lab = np.zeros((96, 128), np.uint8)
    for k in range(1, 4):
        y, x = rng.integers(0, 64), rng.integers(0, 96)
        lab[y:y + 32, x:x + 32] = k
    img = (np.array([[40, 40, 40], [200, 30, 30], [30, 200, 30], [30, 30, 200]])[lab]
           + rng.integers(0, 30, lab.shape + (3,))).astype(np.uint8)
    Image.fromarray(img).save(root / "img" / f"{i}.png")
    Image.fromarray(lab).save(root / "lab" / f"{i}.png")
    lines.append(f"img/{i}.png lab/{i}.png")
(root / "train.txt").write_text("\n".join(lines) + "\n")
EOF

train_cmd() {  # train_cmd WORK_DIR EXTRA_SET...: a few steps of pspnet_r18 on the test data
  local wd="$1"; shift
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  "$PY" -m pspnet train --data-root "$WORK/data" --train-list "$WORK/data/train.txt" \
    --num-classes 4 --arch pspnet_r18 --crop-size "$CROP" --batch-size 2 --work-dir "$wd" -q \
    --set train.max_iter="$STEPS" --set train.device="$DEVICE" --set data.num_workers=0 \
    --set train.checkpoint_interval="$STEPS" "${sets[@]}"
}

path_train-bf16() { train_cmd "$WORK/bf16" train.precision=bf16 train.channels_last=false; }
path_train-fp16() {
  if [ "$DRY" = 1 ]; then
    echo "(dry run: fp16 needs CUDA and its GradScaler; the same command runs in fp32)"
  fi
  train_cmd "$WORK/fp16" train.precision="$LOW" train.channels_last=false
  # The checkpoint must hold the GradScaler's state on the GPU (empty where none ran).
  "$PY" - "$WORK/fp16" "$DRY" <<'EOF'
import sys, torch
from pathlib import Path
ckpt = sorted(Path(sys.argv[1]).rglob("*.pt"))[-1]
state = torch.load(ckpt, map_location="cpu", weights_only=False)
scaler = state.get("scaler")
print(f"checkpoint {ckpt.name}: scaler state {sorted(scaler) if scaler else 'none'}")
if sys.argv[2] == "0" and not (scaler and scaler.get("scale")):
    sys.exit("an fp16 run on CUDA saved no GradScaler state")
EOF
}
path_train-channels-last() { train_cmd "$WORK/cl" train.precision=bf16 train.channels_last=true; }
path_ddp-syncbn() {
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m pspnet train \
    --data-root "$WORK/data" --train-list "$WORK/data/train.txt" --num-classes 4 \
    --arch pspnet_r18 --crop-size "$CROP" --batch-size 2 --work-dir "$WORK/ddp" -q \
    --set train.max_iter="$STEPS" --set train.device="$DEVICE" --set train.sync_bn=true \
    --set data.num_workers=0
}
path_resume() {
  train_cmd "$WORK/resume" train.precision="$LOW" || return 1
  train_cmd "$WORK/resume" train.precision="$LOW" train.max_iter=$((2 * STEPS)) \
    train.resume=auto
}
path_compile-inference() {
  "$PY" - "$DEVICE" "$DRY" <<'EOF'
import sys, tempfile, time, torch
import pspnet
from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.inference import predict_labels
device, dry = sys.argv[1], sys.argv[2] == "1"
torch.manual_seed(0)
model = pspnet.create_model("pspnet_r18", 4, head_channels=32).eval()
x = torch.randn(1, 3, 97, 129, device=device)
with tempfile.TemporaryDirectory() as tmp:
    save_weights(model, tmp + "/w", WeightsMeta(model.config))
    ref = pspnet.load_model(tmp + "/w", device=device)
    with torch.no_grad():
        want = ref(x)["out"].argmax(1)
    # In a dry run the CPU compiles fp32 only (bf16 is emulated there and compiling is slow).
    for precision in ("fp32",) if dry else ("fp32", "bf16", "fp16"):
        t0 = time.perf_counter()
        fast = pspnet.load_model(tmp + "/w", device=device, precision=precision,
                                 compile=not dry)
        got = predict_labels(fast, x)
        agree = (got == want).float().mean().item()
        print(f"{precision}: compiled={not dry} {time.perf_counter() - t0:.1f} s, "
              f"labels agreeing with fp32 eager {100 * agree:.2f}%")
        if agree < (0.999 if precision == "fp32" else 0.95):
            sys.exit(f"{precision}: only {100 * agree:.2f}% of labels agree with fp32 eager")
EOF
}
path_benchmark() {
  # shellcheck disable=SC2086  # SIZES and VARIANTS are word lists
  "$PY" -m pspnet benchmark --device "$DEVICE" --arch "$BENCH_ARCH" --sizes $SIZES \
    --variants $VARIANTS --no-sliding --no-train --no-data --no-cpu-archs \
    --warmup 1 --repeats 3 --markdown "$WORK/benchmark.md" && cat "$WORK/benchmark.md"
}
path_onnxruntime-cuda() {
  if ! "$PY" -c "import onnxruntime, onnx" 2>/dev/null; then
    echo "SKIP: onnxruntime / onnx not installed"; return 77
  fi
  "$PY" - "$WORK/m.onnx" "$DRY" <<'EOF'
import sys, numpy as np, onnxruntime as ort, torch
import pspnet
from pspnet.export.onnx import export_onnx
path, dry = sys.argv[1], sys.argv[2] == "1"
provider = "CPUExecutionProvider" if dry else "CUDAExecutionProvider"
if provider not in ort.get_available_providers():
    print(f"SKIP: {provider} not available ({ort.get_available_providers()})"); sys.exit(77)
torch.manual_seed(0)
model = pspnet.create_model("pspnet_r18", 4, head_channels=32).eval()
export_onnx(model, path, height=65, width=65, check=False)
sess = ort.InferenceSession(path, providers=[provider])
x = np.random.default_rng(0).standard_normal((1, 3, 65, 65)).astype(np.float32)
got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
with torch.no_grad():
    want = model(torch.from_numpy(x))["out"].numpy()
err = float(np.abs(got - want).max() / np.abs(want).max())
print(f"{sess.get_providers()[0]}: relative max error {err:.2e}")
sys.exit(0 if err < 1e-2 else f"ONNX Runtime ({provider}) differs from eager by {err:.2e}")
EOF
}

timeout_of() {
  case "$1" in benchmark) echo "$T_BENCH" ;; compile-inference) echo "$T_COMPILE" ;; *) echo "$T_TRAIN" ;; esac
}

declare -A STATUS SECONDS_OF NOTE
failed=0
for name in $PATHS; do
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  log="$WORK/$name.log"
  start=$(date +%s)
  # Each path in its own subshell and process group, under its own time limit.
  ( set -o pipefail; "path_$name" ) >"$log" 2>&1 &
  pid=$!
  limit=$(timeout_of "$name")
  ( sleep "$limit"; kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null ) &
  watchdog=$!
  wait "$pid"; rc=$?
  kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
  SECONDS_OF[$name]=$(( $(date +%s) - start ))
  if [ "$rc" = 0 ]; then STATUS[$name]=PASS
  elif [ "$rc" = 77 ]; then STATUS[$name]=SKIP
  elif [ "$rc" = 143 ]; then STATUS[$name]=FAIL; NOTE[$name]="timed out after ${limit}s"; failed=1
  else STATUS[$name]=FAIL; failed=1
  fi
  [ -n "${NOTE[$name]:-}" ] || NOTE[$name]="$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160 | tr '|' '/')"
  echo "${STATUS[$name]} $name (${SECONDS_OF[$name]} s): ${NOTE[$name]}"
  if [ "${STATUS[$name]}" = FAIL ]; then sed 's/^/    /' "$log" | tail -n 20; fi
done

{
  echo "# GPU check ($( [ "$DRY" = 1 ] && echo "dry run on the CPU" || echo "CUDA"))"
  echo
  echo "Commit \`$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)\`, $(date -u '+%Y-%m-%d %H:%M UTC'), device: $("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')" 2>/dev/null), torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)."
  echo
  echo "| path | result | seconds | last line |"
  echo "|---|---|---|---|"
  for name in $PATHS; do
    [ -n "${STATUS[$name]:-}" ] || continue
    echo "| $name | ${STATUS[$name]} | ${SECONDS_OF[$name]} | ${NOTE[$name]} |"
  done
  if [ -f "$WORK/benchmark.md" ]; then echo; cat "$WORK/benchmark.md"; fi
} >"$OUT"
echo "wrote $OUT"
exit "$failed"
