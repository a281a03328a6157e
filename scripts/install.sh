#!/usr/bin/env bash
# Installs the GStreamer element, the `reggan` CLI and everything they need at run time,
# so that `gst-inspect-1.0 faceexpression`, `gst-launch-1.0 ... faceexpression ...` and
# `reggan` work in a new shell without any environment variable.
#
# Usage: scripts/install.sh [--prefix DIR] [--no-build] [--force]
#        scripts/install.sh --uninstall [--prefix DIR]
#
# Layout (src/install.rs finds the files from where the element or the CLI is loaded):
#   PREFIX/bin/reggan
#   PREFIX/lib/gstreamer-1.0/libgstreggan.so
#   PREFIX/lib/reggan/libonnxruntime.so.*           ONNX Runtime (MIT), from .deps/
#   PREFIX/share/reggan/models/<name>/              every shipped model
#   PREFIX/share/reggan/blazeface/                  BlazeFace ONNX (Apache-2.0)
#   PREFIX/share/reggan/london-012-neutral.jpg      demo face (CC BY 4.0), NOTICE
#   PREFIX/share/reggan/install-manifest.txt        what was installed, for --uninstall
# Without --prefix: PREFIX=/usr/local, plus a link to the plugin in GStreamer's system
# plugin directory (pkg-config gstreamer-1.0 pluginsdir), so no GST_PLUGIN_PATH is needed.
# With --prefix, GStreamer finds the element with GST_PLUGIN_PATH=PREFIX/lib/gstreamer-1.0.
#
# Without --no-build it first runs scripts/setup.sh --runtime (set-up + build of the CLI
# and the plugin, idempotent). The machine needs the Debian packages that set-up installs
# (OpenCV, GStreamer, opencv-data). Files it did not install are never replaced unless
# --force is given; a failed install removes what it had written.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '\033[1;34m[install]\033[0m %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

PREFIX=""
BUILD=1
FORCE=0
UNINSTALL=0
while (($#)); do
  case "$1" in
    --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; PREFIX="$2"; shift ;;
    --prefix=*) PREFIX="${1#--prefix=}" ;;
    --no-build) BUILD=0 ;;
    --force) FORCE=1 ;;
    --uninstall) UNINSTALL=1 ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
SYSTEM_LINK=0
if [[ -z "$PREFIX" ]]; then
  PREFIX=/usr/local
  SYSTEM_LINK=1
fi
[[ "$PREFIX" == /* ]] || PREFIX="$PWD/$PREFIX"
PREFIX="${PREFIX%/}"
MANIFEST="$PREFIX/share/reggan/install-manifest.txt"

# --- uninstall: exactly what a manifest lists ------------------------------------------------
# Lines are "f PATH" (a file or link the install wrote) and "d PATH" (a directory it
# created). Files go first, then the directories, deepest first, each only when empty.
remove_listed() {
  local list="$1" kind path
  while read -r kind path; do
    if [[ "$kind" == f ]]; then rm -f -- "$path"; fi
  done <<<"$list"
  while read -r kind path; do
    if [[ -d "$path" ]]; then rmdir --ignore-fail-on-non-empty -- "$path"; fi
  done < <(grep '^d ' <<<"$list" | sort -r -k2 || true)
}

uninstall() {
  local list
  list="$(cat "$MANIFEST")"
  rm -f -- "$MANIFEST"
  remove_listed "$list"
}

if ((UNINSTALL)); then
  [[ -f "$MANIFEST" ]] || die "no reggan install in $PREFIX (no $MANIFEST)"
  uninstall
  say "removed the reggan install from $PREFIX"
  exit 0
fi

# --- what to install ---------------------------------------------------------------------------
if ((BUILD)); then
  "$ROOT/scripts/setup.sh" --runtime
fi
[[ -f "$ROOT/.deps/env.sh" ]] || die "run scripts/setup.sh --runtime first (no .deps/env.sh)"
# shellcheck source=/dev/null
source "$ROOT/.deps/env.sh"
RELEASE="${CARGO_TARGET_DIR:-$ROOT/target}/release"
for built in "$RELEASE/reggan" "$RELEASE/libgstreggan.so"; do
  [[ -f "$built" ]] || die "$built is missing (run without --no-build, or cargo build --release -p reggan-cli -p gst-plugin-reggan)"
done
ORT_DIR="$(dirname "$ORT_DYLIB_PATH")"
[[ -f "$ORT_DYLIB_PATH" ]] || die "ONNX Runtime $ORT_DYLIB_PATH is missing (run scripts/setup.sh --runtime)"
[[ -f "$REGGAN_BLAZEFACE_DIR/face_detection_front_128x128_barracuda.onnx" ]] ||
  die "BlazeFace files missing in $REGGAN_BLAZEFACE_DIR (run scripts/setup.sh --runtime)"

# Every file as "SOURCE DESTINATION MODE", decided and checked before anything is written.
PLAN=()
plan() { PLAN+=("$1"$'\t'"$2"$'\t'"$3"); }
# The release profile keeps debug info (for profiling); installed copies are stripped
# (mode 755s / 644s), about 50 MB less.
plan "$RELEASE/reggan" "$PREFIX/bin/reggan" 755s
plan "$RELEASE/libgstreggan.so" "$PREFIX/lib/gstreamer-1.0/libgstreggan.so" 644s
for lib in "$ORT_DIR"/libonnxruntime*.so*; do
  plan "$lib" "$PREFIX/lib/reggan/$(basename "$lib")" 644
done
for f in "$REGGAN_BLAZEFACE_DIR"/*.onnx "$REGGAN_BLAZEFACE_DIR"/LICENSE*; do
  if [[ -f "$f" ]]; then plan "$f" "$PREFIX/share/reggan/blazeface/$(basename "$f")" 644; fi
done
for manifest in "$ROOT"/models/*/model.json; do
  model="$(dirname "$manifest")"
  while IFS= read -r -d '' f; do
    plan "$f" "$PREFIX/share/reggan/models/${f#"$ROOT/models/"}" 644
  done < <(find "$model" -type f -print0)
done
plan "$ROOT/assets/london-012-neutral.jpg" "$PREFIX/share/reggan/london-012-neutral.jpg" 644
plan "$ROOT/NOTICE" "$PREFIX/share/reggan/NOTICE" 644
SYSTEM_PLUGIN=""
if ((SYSTEM_LINK)); then
  SYSTEM_PLUGIN="$(pkg-config --variable=pluginsdir gstreamer-1.0)/libgstreggan.so"
fi

OLD_LIST=""
[[ -f "$MANIFEST" ]] && OLD_LIST="$(cat "$MANIFEST")"
ours() { grep -qxF "f $1" <<<"$OLD_LIST"; }
if ((!FORCE)); then
  for entry in "${PLAN[@]}" "-"$'\t'"$SYSTEM_PLUGIN"$'\t'"-"; do
    IFS=$'\t' read -r _ dest _ <<<"$entry"
    if [[ -n "$dest" ]] && [[ -e "$dest" || -L "$dest" ]] && ! ours "$dest"; then
      die "$dest exists and was not installed by scripts/install.sh; nothing was changed (--force replaces it)"
    fi
  done
fi

# --- install ------------------------------------------------------------------------------------
if [[ -n "$OLD_LIST" ]]; then
  say "replacing the previous install in $PREFIX"
  uninstall
fi
RECORD="$(mktemp)"
trap 'status=$?; if ((status)); then say "failed: removing what was written"; remove_listed "$(cat "$RECORD")"; fi; rm -f "$RECORD"' EXIT

make_dir() { # mkdir -p that records each directory it creates
  local dir="$1" missing=()
  while [[ ! -d "$dir" ]]; do missing+=("$dir"); dir="$(dirname "$dir")"; done
  mkdir -p "$1"
  local d
  for d in "${missing[@]}"; do echo "d $d" >>"$RECORD"; done
}

say "installing into $PREFIX"
for entry in "${PLAN[@]}"; do
  IFS=$'\t' read -r src dest mode <<<"$entry"
  make_dir "$(dirname "$dest")"
  echo "f $dest" >>"$RECORD"
  if [[ "$mode" == *s ]]; then
    install -s -m "${mode%s}" "$src" "$dest"
  else
    install -m "$mode" "$src" "$dest"
  fi
done
if [[ -n "$SYSTEM_PLUGIN" ]]; then
  make_dir "$(dirname "$SYSTEM_PLUGIN")"
  echo "f $SYSTEM_PLUGIN" >>"$RECORD"
  ln -sfn "$PREFIX/lib/gstreamer-1.0/libgstreggan.so" "$SYSTEM_PLUGIN"
fi
# The manifest goes last: the element and the CLI take its presence as a finished install.
cp "$RECORD" "$MANIFEST.tmp"
mv "$MANIFEST.tmp" "$MANIFEST"

size="$(du -sh "$PREFIX/share/reggan" "$PREFIX/lib/reggan" "$PREFIX/bin/reggan" "$PREFIX/lib/gstreamer-1.0/libgstreggan.so" | awk '{print $1}' | paste -sd+)"
say "installed $(grep -c '^f ' "$MANIFEST") files ($size): $MANIFEST lists them"
if ((SYSTEM_LINK)); then
  say "try: gst-inspect-1.0 faceexpression; reggan --help (uninstall: scripts/install.sh --uninstall)"
else
  say "GStreamer finds the element with GST_PLUGIN_PATH=$PREFIX/lib/gstreamer-1.0; the CLI is $PREFIX/bin/reggan"
  say "uninstall: scripts/install.sh --uninstall --prefix $PREFIX"
fi
