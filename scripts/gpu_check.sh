#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and no network:
#   scripts/gpu_check.sh OUTDIR [tests] [bench-xception] [bench-cifar] [train]   (all when none is named)
# Uses the project from this checkout (PYTHONPATH=src) on the torch installed there, and writes to OUTDIR:
# device.txt, tests.log, bench_*.md/.json (convzoo beside timm, same run), train_*.log and summary.md.
# A failing step is logged and the next one still runs; the exit status counts the failures. Each stage
# takes a few minutes on an H100 (the compiled rows compile first); run them one by one where a call is
# time-limited.
set -uo pipefail

out=${1:?usage: scripts/gpu_check.sh OUTDIR [tests] [bench-xception] [bench-cifar] [train]}
shift
stages=${*:-tests bench-xception bench-cifar train}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=torch
PY=${PYTHON:-python3}
failures=0

step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, record the time and status in summary.md
    local name=$1 started status
    shift
    started=$(date +%s)
    "$@" >"$out/$name.log" 2>&1
    status=$?
    echo "| $name | $status | $(($(date +%s) - started)) s | \`$*\` |" >>"$out/summary.md"
    [ "$status" -eq 0 ] || failures=$((failures + 1))
}

bench() {  # bench NAME ARGS...: a convzoo bench table as OUTDIR/bench_NAME.md and .json
    local name=$1
    shift
    step "bench_$name" bash -c "$PY -m convzoo bench --device cuda --json '$out/bench_$name.json' $* \
        > '$out/bench_$name.md'"
}

$PY - >"$out/device.txt" 2>&1 <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("timm", "onnxruntime", "safetensors", "h5py", "tqdm", "matplotlib", "tensorboard", "pytest"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "missing:", e)
EOF
printf '| step | exit | time | command |\n|---|---|---|---|\n' >"$out/summary.md"

if [[ " $stages " == *" tests "* ]]; then
    # The files that hold CUDA tests; a module whose imports are missing there still lets the others run.
    step tests $PY -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors \
        tests/test_train.py tests/test_eval.py tests/test_predict.py tests/test_bench.py
fi

if [[ " $stages " == *" bench-xception "* ]]; then
    bench xception_train xception --mode train --batch-size 128 --runtime eager,channels_last,compile \
        --precision fp32,bf16 --against timm
    bench xception_infer xception --mode infer --batch-size 256 --runtime eager,channels_last,optimized,compile \
        --precision fp32,bf16 --against timm
fi

if [[ " $stages " == *" bench-cifar "* ]]; then
    bench cifar_slim xception_cifar_slim xception_cifar_slim_thinner --mode train --batch-size 64 \
        --input-size 32 32 --runtime eager,channels_last,compile --precision fp32,bf16 --against plain --repeats 20
fi

if [[ " $stages " == *" train "* ]]; then
    # 50,000 CIFAR-sized images (the embedded subset repeated) for the time of one full-size epoch.
    $PY - "$out/cifar50k" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from convzoo.data import embedded_cifar10
ds = embedded_cifar10()
records = np.concatenate([ds.labels.numpy().astype(np.uint8)[:, None], ds.images.reshape(len(ds), -1).numpy()], 1)
records = np.resize(records, (50_000, records.shape[1]))
root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
for i in range(5):
    (root / f"data_batch_{i + 1}.bin").write_bytes(records[i * 10_000:(i + 1) * 10_000].tobytes())
(root / "batches.meta.txt").write_text("\n".join(ds.classes) + "\n")
EOF
    for graphs in "" "--compile reduce-overhead"; do
        name=slim50k${graphs:+_graphs}
        step "train_$name" $PY -m convzoo train --device cuda --model xception_cifar_slim --recipe fast \
            --epochs 1 --batch-size 64 --data "$out/cifar50k" --set val_fraction=0.02 $graphs \
            --out "$out/runs/$name" --overwrite
    done
    step train_demo_bf16 $PY -m convzoo train --device cuda --recipe fast --bf16 --out "$out/runs/demo_bf16" \
        --overwrite
    step train_demo_bf16_graphs $PY -m convzoo train --device cuda --recipe fast --bf16 \
        --compile reduce-overhead --out "$out/runs/demo_bf16_graphs" --overwrite
    step train_demo_fp32 $PY -m convzoo train --device cuda --recipe fast --no-bf16 --out "$out/runs/demo_fp32" \
        --overwrite
    step compare $PY -m convzoo compare "$out/runs/demo_bf16" "$out/runs/demo_fp32" --out "$out/compare.png"
fi

echo "$failures failed step(s); results in $out" | tee -a "$out/summary.md"
exit "$failures"
