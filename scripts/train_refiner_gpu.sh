#!/usr/bin/env bash
# Trains RegGAN's refinement network on flow-warped faces on a lent GPU machine, which
# has PyTorch (and so libtorch) but neither Rust nor this project's system libraries.
#
#   scripts/train_refiner_gpu.sh pack   # here: build, strip and pack into gpu/ (~28 MB)
#   scripts/train_refiner_gpu.sh run    # there, in the repo root, with gpu/ carried
#
# `pack` needs the caches of `scripts/train_regression.sh regflow` (TFEID crops and the
# fitted RegFlow) and `reggan-train prepare --no-tfeid --unpaired ../shared/data/utkface
# --out target/reggan-train/utk`. `run` writes the paper-size network's step times and
# the `medium` network's weights, losses and samples to $OUT (default gpu/out).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GPU=gpu
DATA=target/reggan-train
say() { printf '\033[1;34m[gpu]\033[0m %s\n' "$*" >&2; }

pack() {
    # shellcheck source=/dev/null
    source .deps/env.sh
    cargo build --release -p reggan-trainer --example train_refiner --bin reggan-train
    rm -rf "$GPU" && mkdir -p "$GPU/lib"
    strip -o "$GPU/train_refiner" target/release/examples/train_refiner
    # The program calls nothing of OpenCV or dlib, but the linker keeps a few of their
    # symbols (C++ vtables of code that is never reached). Empty stand-ins with the same
    # sonames satisfy the loader there; a call into one would crash, and none is made.
    local syms stub
    syms=$(nm -D --undefined-only "$GPU/train_refiner" | awk '{print $NF}' | grep -E 'cv|dlib' | grep -v '@' | sort -u)
    stub=$(mktemp --suffix=.s)
    {
        echo '.section .note.GNU-stack,"",@progbits'
        echo '.data'
        for s in $syms; do printf '.globl %s\n.type %s, @object\n.size %s, 64\n%s: .zero 64\n' "$s" "$s" "$s" "$s"; done
    } >"$stub"
    for lib in $(readelf -d "$GPU/train_refiner" | sed -n 's/.*Shared library: \[\(lib\(opencv\|dlib\)[^]]*\)\]/\1/p'); do
        gcc -shared -o "$GPU/lib/$lib" -Wl,-soname,"$lib" "$stub"
    done
    rm -f "$stub"
    # JPEG crops; only the sharpest UTKFace faces, so that the repository and gpu/
    # together stay under the device tool's 64 MiB.
    target/release/reggan-train pack --cache "$DATA/cache" --cache "$DATA/utk" \
        --sharpest "${SHARPEST:-1500}" --regflow-weights "$DATA/regflow-weights" --out "$GPU/pack"
    find "$GPU" -type f -printf '%s\n' | awk '{s += $1} END {printf "gpu/: %.1f MB\n", s / 1e6}'

}

run() {
    local out="${OUT:-$GPU/out}"
    mkdir -p "$out"
    local torch_lib
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$ROOT/$GPU/lib:$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export REGGAN_THREADS=16 REGGAN_GPU_MEM_GB=120
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    local common=(--model reggan --cache "$GPU/pack/cache" --regflow-weights "$GPU/pack/regflow"
        --restore-cache "$GPU/pack/utk" --device "${DEVICE:-cuda}")

    say "paper-size network: step times (restoration, then fine-tuning with discriminators)"
    timeout "${PAPER_SECONDS:-120}" "$GPU/train_refiner" "${common[@]}" --config paper \
        --batch "${PAPER_BATCH:-16}" --pretrain-steps 40 --steps 80 --every 20 \
        --out /tmp/paper >"$out/paper.log" 2>&1 || true
    grep -E 'generator|checkpoint|step 80' "$out/paper.log" | cut -c1-300 || true
    cp /tmp/paper/state.json "$out/paper_state.json" 2>/dev/null || true

    say "medium network: restoration pretraining (UTKFace + TFEID), then fine-tuning"
    local run=/tmp/medium
    "$GPU/train_refiner" "${common[@]}" --config medium --batch "${BATCH:-32}" \
        --pretrain-steps 1000000 --steps 1000000 --every 400 \
        --max-minutes "${PRETRAIN_MINUTES:-2.2}" --out "$run" >"$out/medium.log" 2>&1
    tail -n 2 "$out/medium.log" | cut -c1-400
    # Pretraining ends where the time budget stopped it; fine-tuning continues from there.
    python3 - "$run" <<'EOF'
import json, sys
run = sys.argv[1]
step = json.load(open(f"{run}/state.json"))["step"]
cfg = json.load(open(f"{run}/config.json"))
cfg["pretrain_steps"] = step
json.dump(cfg, open(f"{run}/config.json", "w"), indent=2)
print("pretraining steps:", step)
EOF
    "$GPU/train_refiner" "${common[@]}" --resume --steps 1000000 \
        --max-minutes "${FINETUNE_MINUTES:-3.3}" --out "$run" >>"$out/medium.log" 2>&1
    tail -n 2 "$out/medium.log" | cut -c1-400
    # The device tool brings back at most 8 files.
    for f in gen.safetensors config.json state.json losses.png samples.png; do
        cp "$run/$f" "$out/$f"
    done
    ls -la "$out"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
