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

# faceexpression takes I420 (and NV12) itself, writing back only the faces: the first
# videoconvert turns the camera's YUY2 into I420 (left alone, it picks BGRx: a 1280x720
# YUY2 stream with a face went through in 2.8 s per 300 frames via I420, 3.4-3.6 s via
# BGRx and back to I420) and the second gives the display what it wants, passing
# through what needs no conversion.
exec gst-launch-1.0 \
  v4l2src device="$V4L2_DEVICE" ! videoconvert ! video/x-raw,format=I420 ! \
  faceexpression expression="$EXPRESSION" intensity="$INTENSITY" ! \
  videoconvert ! autovideosink sync=false
