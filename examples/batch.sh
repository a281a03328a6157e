#!/bin/sh
# Post-process a recorded video: change every face's expression, re-encode to H.264/MP4.
#
# Environment: run `source .deps/env.sh` in the repository root first (GST_PLUGIN_PATH
# to target/release with libgstreggan.so from `cargo build --release -p gst-plugin-reggan`,
# ORT_DYLIB_PATH and REGGAN_BLAZEFACE_DIR for the model runtime and the face detector).
#
# Usage: examples/batch.sh input-video output.mp4 [expression] [intensity]
# The input is anything decodebin reads (mp4, mkv, webm, ...). Only the video is kept;
# `reggan apply` keeps the audio as it is and takes whole folders (--jobs, --resume).
set -eu
if [ $# -lt 2 ]; then
  echo "usage: $0 input-video output.mp4 [expression] [intensity]" >&2
  exit 2
fi
INPUT="$1"
OUTPUT="$2"
EXPRESSION="${3:-happy}"
INTENSITY="${4:-1.0}"

# faceexpression takes the decoder's I420 as it is (videoconvert only acts when the
# decoder gives something else, e.g. 10-bit) and writes back only the faces: no
# conversion of every pixel to RGB and back, which costs time and, through two
# videoconverts, shifted this project's clips by about 3 levels. videoflip turns a phone
# video stored sideways with a display rotation upright (the detector wants upright
# faces, and mp4mux cannot write the rotation back). -e sends EOS on Ctrl-C so the MP4
# is still finalised.
exec gst-launch-1.0 -e \
  filesrc location="$INPUT" ! decodebin ! queue ! videoflip video-direction=auto ! \
  videoconvert ! video/x-raw,format=I420 ! \
  faceexpression expression="$EXPRESSION" intensity="$INTENSITY" ! \
  x264enc speed-preset=medium ! video/x-h264,profile=high ! \
  mp4mux ! filesink location="$OUTPUT"
