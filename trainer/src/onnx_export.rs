//! Writes the expression layers as an ONNX graph following the model contract:
//! inputs `face` float32 [N,3,S,S] and `expression` int64 [N], output `face_out`.
//!
//! Gather W and B by expression; Pad the face (edge) by k/2; k² Slices -> Unsqueeze ->
//! Concat = [N,3,k²,S,S]; Mul by W; ReduceSum over k²; Add B; Clip to [0,1]. The
//! same arithmetic as `regression::Layer::apply`, so tch can check the file.

use std::path::Path;

use anyhow::Result;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, ModelProto, TensorProto};
use tch::{Kind, Tensor};

/// The generic graph builders live in `reggan-onnxgraph` (shared with the core's tests
/// and the fuzz targets); the trainer's exporters take them from here.
pub use reggan_onnxgraph::{
    attr_int, attr_ints, attr_str, int64s, node, scalar_f32, value_info, write_model, IR_VERSION,
    OPSET,
};

/// W/B as stored in the file: float32, or float16 rounded (what the graph computes
/// with after its Cast back to float).
pub fn stored(t: &Tensor, fp16: bool) -> Tensor {
    if fp16 {
        t.to_kind(Kind::Half).to_kind(Kind::Float)
    } else {
        t.to_kind(Kind::Float)
    }
}

/// A weight tensor as an initializer: float32, or float16 when `fp16`.
pub fn initializer(name: &str, t: &Tensor, fp16: bool) -> Result<TensorProto> {
    let dims = t.size();
    let flat = t.flatten(0, -1).contiguous();
    Ok(if fp16 {
        let bits = Vec::<i16>::try_from(&flat.to_kind(Kind::Half).view_dtype(Kind::Int16))?;
        let bits: Vec<u16> = bits.iter().map(|&b| b as u16).collect();
        reggan_onnxgraph::float16_bits(name, &dims, &bits)
    } else {
        let vals = Vec::<f32>::try_from(&flat.to_kind(Kind::Float))?;
        reggan_onnxgraph::floats(name, &dims, &vals)
    })
}

/// Wraps a graph into a model of this trainer's IR version and opset (producer
/// `reggan-trainer` and its version).
pub fn model_of(g: GraphProto) -> ModelProto {
    reggan_onnxgraph::model_of(g, "reggan-trainer", env!("CARGO_PKG_VERSION"))
}

/// The graph for W [E,3,k²,S,S] and B [E,3,S,S].
pub fn build(w: &Tensor, b: &Tensor, k: usize, fp16: bool) -> Result<ModelProto> {
    let s = w.size()[3];
    let mut g = GraphProto::new();
    g.name = "reggan_expression_layer".into();
    g.input = vec![
        value_info("face", DataType::FLOAT, &[3, s, s]),
        value_info("expression", DataType::INT64, &[]),
    ];
    g.output = vec![value_info("face_out", DataType::FLOAT, &[3, s, s])];
    g.initializer = vec![
        initializer("W", w, fp16)?,
        initializer("B", b, fp16)?,
        int64s("axis2", &[2]),
        scalar_f32("zero", 0.0),
        scalar_f32("one", 1.0),
    ];

    // Per-face weights; float16 storage is cast back so the arithmetic is float32.
    let (wg, bg) = if fp16 { ("W_h", "B_h") } else { ("W_g", "B_g") };
    g.node.push(node(
        "Gather",
        &["W", "expression"],
        wg,
        vec![attr_int("axis", 0)],
    ));
    g.node.push(node(
        "Gather",
        &["B", "expression"],
        bg,
        vec![attr_int("axis", 0)],
    ));
    if fp16 {
        g.node.push(node(
            "Cast",
            &["W_h"],
            "W_g",
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
        g.node.push(node(
            "Cast",
            &["B_h"],
            "B_g",
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
    }

    push_shifted(&mut g, "face", k, s, "", "stack");
    push_weighted_sum(&mut g, "stack", "W_g", "B_g", "", "biased");
    g.node
        .push(node("Clip", &["biased", "zero", "one"], "face_out", vec![]));

    Ok(model_of(g))
}

/// Nodes computing the k² shifted copies of `input` [N,C,H,W] (edge padded by k/2),
/// stacked on axis 2 as `out` [N,C,k²,H,W], in the order of `regression::shifted`.
/// `prefix` keeps the names of several such blocks in one graph apart. Needs the
/// initializer `axis2` ([2]) in the graph.
pub fn push_shifted(g: &mut GraphProto, input: &str, k: usize, size: i64, prefix: &str, out: &str) {
    if k == 1 {
        g.node
            .push(node("Unsqueeze", &[input, "axis2"], out, vec![]));
        return;
    }
    let r = (k / 2) as i64;
    let (pads, axes, padded) = (
        format!("{prefix}pads"),
        format!("{prefix}hw_axes"),
        format!("{prefix}padded"),
    );
    g.initializer.push(int64s(&pads, &[0, 0, r, r, 0, 0, r, r]));
    g.initializer.push(int64s(&axes, &[2, 3]));
    g.node.push(node(
        "Pad",
        &[input, &pads],
        &padded,
        vec![attr_str("mode", "edge")],
    ));
    let mut copies = Vec::new();
    for dy in 0..k as i64 {
        for dx in 0..k as i64 {
            let (st, en, sl, un) = (
                format!("{prefix}st_{dy}_{dx}"),
                format!("{prefix}en_{dy}_{dx}"),
                format!("{prefix}sl_{dy}_{dx}"),
                format!("{prefix}un_{dy}_{dx}"),
            );
            g.initializer.push(int64s(&st, &[dy, dx]));
            g.initializer.push(int64s(&en, &[dy + size, dx + size]));
            g.node
                .push(node("Slice", &[&padded, &st, &en, &axes], &sl, vec![]));
            g.node.push(node("Unsqueeze", &[&sl, "axis2"], &un, vec![]));
            copies.push(un);
        }
    }
    let refs: Vec<&str> = copies.iter().map(|c| c.as_str()).collect();
    g.node
        .push(node("Concat", &refs, out, vec![attr_int("axis", 2)]));
}

/// Nodes computing `out = ReduceSum_axis2(stack * w) + b`: the per-pixel linear map of
/// a `push_shifted` stack with gathered weights [N,C,k²,H,W] and bias [N,C,H,W].
/// Needs the initializer `axis2` ([2]).
pub fn push_weighted_sum(
    g: &mut GraphProto,
    stack: &str,
    w: &str,
    b: &str,
    prefix: &str,
    out: &str,
) {
    let (prod, sum) = (format!("{prefix}prod"), format!("{prefix}sum"));
    g.node.push(node("Mul", &[stack, w], &prod, vec![]));
    g.node.push(node(
        "ReduceSum",
        &[&prod, "axis2"],
        &sum,
        vec![attr_int("keepdims", 0)],
    ));
    g.node.push(node("Add", &[&sum, b], out, vec![]));
}

/// Writes `dir/model.onnx`; returns its size in bytes.
pub fn write(w: &Tensor, b: &Tensor, k: usize, fp16: bool, dir: &Path) -> Result<u64> {
    write_model(&build(w, b, k, fp16)?, dir)
}
