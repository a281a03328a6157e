#!/bin/sh
# Live: change the expression of the faces in front of the webcam.
#
# Environment: run `source .deps/env.sh` in the repository root first (it sets
# GST_PLUGIN_PATH to target/release, where `cargo build --release -p gst-plugin-reggan`
# puts libgstreggan.so, and ORT_DYLIB_PATH / REGGAN_BLAZEFACE_DIR for the model runtime
# and the face detector).
#
# Usage: examples/webcam.sh [expression] [intensity] [device]
#   expression: happy sad angry disgusted afraid surprised (default happy)
#   intensity:  0.0 .. 2.0 (default 1.0)
#   device:     /dev/video0 (default)
# Add `model=/path/to/model-dir` or `device=cuda` to the faceexpression element to pick
# another model or execution provider; GST_DEBUG=faceexpression:5 logs per-frame timings.
set -eu
EXPRESSION="${1:-happy}"
INTENSITY="${2:-1.0}"
V4L2_DEVICE="${3:-/dev/video0}"

# faceexpression takes I420, NV12 and packed RGB-family formats: the videoconverts turn
# the camera's format (YUY2, or I420 from jpegdec) into one of them and back for the
# display, passing through what needs no conversion.
exec gst-launch-1.0 \
  v4l2src device="$V4L2_DEVICE" ! videoconvert ! \
  faceexpression expression="$EXPRESSION" intensity="$INTENSITY" ! \
  videoconvert ! autovideosink sync=false
