//! A small ONNX graph builder for the GAN generators: every op the networks use, with
//! per-face shapes tracked so parameters, FLOPs and activation sizes can be counted.

use std::collections::HashMap;

use anyhow::Result;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{AttributeProto, NodeProto, TensorProto};
use reggan_onnxgraph::{
    attr_float, attr_int, attr_ints, attr_str, float_data, floats, int64_data, node,
};
use tch::{Kind, Tensor};

use super::nets::{Conv, IN_EPS};

#[derive(Default)]
pub struct Onnx {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    counter: usize,
    /// Per-face shape (C, H, W) of each image-like value.
    shapes: HashMap<String, (i64, i64, i64)>,
    /// Multiply-adds per face (convolutions only; element-wise ops are not counted).
    pub macs: f64,
    /// Activation elements per face produced by the graph's ops.
    pub activations: f64,
    /// Parameters stored as initializers by this builder.
    pub params: i64,
    pub error: Option<String>,
}

/// A float32 initializer of a network parameter (values in `raw_data`).
fn f32_tensor(name: &str, t: &Tensor) -> TensorProto {
    let vals = Vec::<f32>::try_from(
        &t.detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1),
    )
    .unwrap_or_default();
    floats(name, &t.size(), &vals)
}

impl Onnx {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, tag: &str) -> String {
        self.counter += 1;
        format!("g{}_{tag}", self.counter)
    }

    pub fn set_shape(&mut self, name: &str, shape: (i64, i64, i64)) {
        self.shapes.insert(name.into(), shape);
    }

    pub fn shape(&self, name: &str) -> (i64, i64, i64) {
        self.shapes.get(name).copied().unwrap_or((0, 0, 0))
    }

    fn push(&mut self, op: &str, inputs: &[&str], tag: &str, attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(tag);
        self.nodes.push(node(op, inputs, &out, attrs));
        out
    }

    fn param(&mut self, t: &Tensor) -> String {
        let name = self.fresh("p");
        self.params += t.numel() as i64;
        self.inits.push(f32_tensor(&name, t));
        name
    }

    fn ints(&mut self, dims: &[i64], vals: &[i64]) -> String {
        let name = self.fresh("c");
        self.inits.push(int64_data(&name, dims, vals));
        name
    }

    fn floats(&mut self, dims: &[i64], vals: &[f32]) -> String {
        let name = self.fresh("c");
        self.inits.push(float_data(&name, dims, vals));
        name
    }

    fn track(&mut self, name: &str, shape: (i64, i64, i64)) {
        self.activations += (shape.0 * shape.1 * shape.2) as f64;
        self.shapes.insert(name.into(), shape);
    }

    pub fn conv(&mut self, x: &str, c: &Conv) -> String {
        let (cin, h, w) = self.shape(x);
        let ws = c.w.size();
        let k = ws[2];
        let (cout, oh, ow) = if c.transposed {
            (
                ws[1],
                (h - 1) * c.stride - 2 * c.pad + k,
                (w - 1) * c.stride - 2 * c.pad + k,
            )
        } else {
            (
                ws[0],
                (h + 2 * c.pad - k) / c.stride + 1,
                (w + 2 * c.pad - k) / c.stride + 1,
            )
        };
        let in_c = if c.transposed { ws[0] } else { ws[1] };
        if in_c != cin && self.error.is_none() {
            self.error = Some(format!("conv expects {in_c} channels, got {cin} at {x}"));
        }
        self.macs += if c.transposed {
            (cin * cout * k * k * h * w) as f64
        } else {
            (cin * cout * k * k * oh * ow) as f64
        };
        let (wn, bn) = (self.param(&c.w), self.param(&c.b));
        let attrs = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[c.stride, c.stride]),
            attr_ints("pads", &[c.pad, c.pad, c.pad, c.pad]),
        ];
        let op = if c.transposed {
            "ConvTranspose"
        } else {
            "Conv"
        };
        let y = self.push(op, &[x, &wn, &bn], "conv", attrs);
        self.track(&y, (cout, oh, ow));
        y
    }

    pub fn prelu(&mut self, x: &str, slope: &Tensor) -> String {
        let s = self.param(&slope.view([-1, 1, 1]));
        let y = self.push("PRelu", &[x, &s], "prelu", vec![]);
        let sh = self.shape(x);
        self.track(&y, sh);
        y
    }

    pub fn instance_norm(&mut self, x: &str, w: &Tensor, b: &Tensor) -> String {
        let (wn, bn) = (self.param(w), self.param(b));
        let y = self.push(
            "InstanceNormalization",
            &[x, &wn, &bn],
            "in",
            vec![attr_float("epsilon", IN_EPS as f32)],
        );
        let sh = self.shape(x);
        self.track(&y, sh);
        y
    }

    /// Element-wise unary op (Relu, Sigmoid, Tanh).
    pub fn unary(&mut self, op: &str, x: &str) -> String {
        let y = self.push(op, &[x], &op.to_lowercase(), vec![]);
        let sh = self.shape(x);
        self.track(&y, sh);
        y
    }

    fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        let y = self.push(op, &[a, b], &op.to_lowercase(), vec![]);
        let sh = self.shape(a);
        self.track(&y, sh);
        y
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.binary("Add", a, b)
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.binary("Mul", a, b)
    }

    /// Nearest-neighbour x2 upsampling (PyTorch's `upsample_nearest2d` with scale 2).
    pub fn up2(&mut self, x: &str) -> String {
        let scales = self.floats(&[4], &[1.0, 1.0, 2.0, 2.0]);
        let y = self.push(
            "Resize",
            &[x, "", &scales],
            "up",
            vec![
                attr_str("mode", "nearest"),
                attr_str("coordinate_transformation_mode", "asymmetric"),
                attr_str("nearest_mode", "floor"),
            ],
        );
        let (c, h, w) = self.shape(x);
        self.track(&y, (c, 2 * h, 2 * w));
        y
    }

    pub fn clip01(&mut self, x: &str) -> String {
        let lo = self.floats(&[], &[0.0]);
        let hi = self.floats(&[], &[1.0]);
        let y = self.push("Clip", &[x, &lo, &hi], "clip", vec![]);
        let sh = self.shape(x);
        self.track(&y, sh);
        y
    }

    /// Concatenation over channels; `channels` is the result's channel count.
    pub fn concat(&mut self, xs: &[&str], channels: i64) -> String {
        let y = self.push("Concat", xs, "cat", vec![attr_int("axis", 1)]);
        let (_, h, w) = self.shape(xs[0]);
        self.track(&y, (channels, h, w));
        y
    }

    /// The int64 [N] index as a one-hot [N, n, H, W] float volume (H, W of "face"):
    /// Equal(Unsqueeze(e), range) -> Cast -> Unsqueeze -> Expand.
    pub fn onehot_tiled(&mut self, expression: &str, n: i64) -> String {
        let (_, h, w) = self.shape("face");
        let ax1 = self.ints(&[1], &[1]);
        let col = self.push("Unsqueeze", &[expression, &ax1], "col", vec![]);
        let range: Vec<i64> = (0..n).collect();
        let rng = self.ints(&[1, n], &range);
        let eq = self.push("Equal", &[&col, &rng], "eq", vec![]);
        let oh = self.push(
            "Cast",
            &[&eq],
            "onehot",
            vec![attr_int("to", DataType::FLOAT as i64)],
        );
        let ax23 = self.ints(&[2], &[2, 3]);
        let oh4 = self.push("Unsqueeze", &[&oh, &ax23], "oh4", vec![]);
        let shape = self.ints(&[4], &[1, n, h, w]);
        let y = self.push("Expand", &[&oh4, &shape], "tiled", vec![]);
        self.track(&y, (n, h, w));
        y
    }

    /// Renames the value `from` to `to` in the last node that produced it.
    pub fn rename_output(&mut self, from: &str, to: &str) -> Result<()> {
        for n in self.nodes.iter_mut().rev() {
            for o in n.output.iter_mut() {
                if o == from {
                    *o = to.into();
                    return Ok(());
                }
            }
        }
        anyhow::bail!("no node produces {from}")
    }
}
