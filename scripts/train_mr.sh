#!/usr/bin/env bash
# Retrains the shipped MR model (models/mr) end to end: prepare -> fit -> export -> measure.
# Usage: scripts/train_mr.sh [OUT_MODEL_DIR]   (default models/mr)
exec "$(dirname "$0")/train_regression.sh" mr "$@"
