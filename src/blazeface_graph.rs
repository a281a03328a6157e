//! The BlazeFace networks with a free input height and width.
//!
//! The published graphs (converted from TensorFlow Lite) fix their input at 128x128 or
//! 256x256, so a 16:9 frame had to be letterboxed into a square and the network spent
//! 44 % of its time on the black bands. Everything in them is convolutional except
//! three kinds of node that spell the size out:
//! - the input's dimensions;
//! - `Concat(x, ConstantOfShape([1, C, H, W]))`, TensorFlow's channel zero-padding of a
//!   residual branch, which becomes `Pad(x)` on the channel axis (same zeros, any H, W);
//! - the `Reshape`s of the heads to `[1, anchors, k]`, which become `[1, -1, k]`.
//!
//! The convolutions' explicit pads are the same at any size whose sides are multiples
//! of the largest anchor stride (every stride-2 layer then sees an even side), so on
//! such a size the rewritten graph computes what the original computes on a square.

use std::collections::HashMap;

use reggan_onnxgraph::onnx_protobuf::tensor_proto::DataType;
use reggan_onnxgraph::onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use reggan_onnxgraph::onnx_protobuf::{
    type_proto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use reggan_onnxgraph::{int64s, node};

/// `onnx` (a BlazeFace graph's bytes) rewritten to take `[1, h, w, 3]` for any `h`, `w`
/// that are multiples of its largest stride; its outputs then hold one row per anchor
/// of that size. An error says which part of the graph was not as expected.
pub fn with_free_input_size(onnx: &[u8]) -> Result<Vec<u8>, String> {
    let mut model =
        ModelProto::parse_from_bytes(onnx).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| "the model has no graph".to_string())?;
    let constants: HashMap<String, Vec<i64>> = graph
        .initializer
        .iter()
        .filter_map(|t| int64_values(t).map(|v| (t.name.clone(), v)))
        .collect();
    // Output name of each ConstantOfShape -> the shape it makes.
    let zero_blocks: HashMap<String, Vec<i64>> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "ConstantOfShape")
        .map(|n| {
            let shape = n.input.first().and_then(|i| constants.get(i));
            match (n.output.first(), shape) {
                (Some(out), Some(shape)) => Ok((out.clone(), shape.clone())),
                _ => Err(format!("ConstantOfShape {} has no constant shape", n.name)),
            }
        })
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut added = Vec::new();
    for n in std::mem::take(&mut graph.node) {
        match n.op_type.as_str() {
            "ConstantOfShape" => {}
            "Concat" if n.input.len() == 2 && zero_blocks.contains_key(&n.input[1]) => {
                let channels = zero_blocks[&n.input[1]]
                    .get(1)
                    .copied()
                    .ok_or_else(|| format!("zero block of {} has no channel axis", n.name))?;
                let pads = format!("{}_channel_pads", n.output[0]);
                added.push(int64s(&pads, &[0, 0, 0, 0, 0, channels, 0, 0]));
                nodes.push(node("Pad", &[&n.input[0], &pads], &n.output[0], vec![]));
            }
            "Reshape" => nodes.push(free_reshape(n, &constants, &mut added)?),
            _ => nodes.push(n),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(added);
    // Inferred shapes of the square graph would contradict the new sizes.
    graph.value_info.clear();
    let input = graph
        .input
        .first_mut()
        .ok_or_else(|| "the graph has no input".to_string())?;
    let dims = dims_of(input)?;
    if dims.len() != 4 {
        return Err(format!("input {} is not NHWC", input.name));
    }
    dims[1].value = Some(dimension::Value::DimParam("height".into()));
    dims[2].value = Some(dimension::Value::DimParam("width".into()));
    for output in graph.output.iter_mut() {
        if let Some(d) = dims_of(output)?.get_mut(1) {
            d.value = Some(dimension::Value::DimParam("anchors".into()));
        }
    }
    model
        .write_to_bytes()
        .map_err(|e| format!("cannot write the rewritten graph: {e}"))
}

/// A `Reshape` to a constant `[1, anchors, k]` made `[1, -1, k]`.
fn free_reshape(
    mut n: NodeProto,
    constants: &HashMap<String, Vec<i64>>,
    added: &mut Vec<TensorProto>,
) -> Result<NodeProto, String> {
    let shape = n
        .input
        .get(1)
        .and_then(|s| constants.get(s))
        .ok_or_else(|| format!("Reshape {} has no constant shape", n.name))?;
    let [batch, _, k] = shape[..] else {
        return Err(format!("Reshape {} is not to [1, anchors, k]", n.name));
    };
    let name = format!("{}_free_shape", n.output[0]);
    added.push(int64s(&name, &[batch, -1, k]));
    n.input[1] = name;
    Ok(n)
}

/// The dimensions of a tensor value's shape, to edit.
fn dims_of(v: &mut ValueInfoProto) -> Result<&mut Vec<Dimension>, String> {
    let name = v.name.clone();
    match v.type_.as_mut().and_then(|t| t.value.as_mut()) {
        Some(type_proto::Value::TensorType(t)) => Ok(&mut t.shape.mut_or_insert_default().dim),
        _ => Err(format!("{name} is not a tensor")),
    }
}

/// The values of an int64 tensor, wherever the file keeps them.
fn int64_values(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type != DataType::INT64 as i32 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    Some(
        t.raw_data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
    )
}
