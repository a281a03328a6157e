//! RegFlow as a format-2 model: `model.onnx` with outputs `face_out` and `flow`, and
//! `model.json` saying so; then ONNX Runtime (through the core's loader) is checked
//! against [`RegFlow::forward`] on real validation faces.
//!
//! Graph: luma (1x1 Conv) -> AveragePool to the G x G grid -> k² shifted copies ->
//! Mul by the target's gathered weights, ReduceSum, Add its bias = flow on the grid ->
//! Resize (bilinear, half-pixel) = `flow` [N,2,S,S] -> GridSample of the face (bilinear,
//! border, pixel centres) = the warped face -> MR appearance layer -> Clip = `face_out`.

use std::path::Path;

use anyhow::{bail, Result};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::GraphProto;
use reggan::{Device, ExpressionModel, Manifest};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::export::{to_array, TFEID_LICENCE, TFEID_NAME};
use crate::flow::{base_grid, LUMA};
use crate::onnx_export::{
    attr_int, attr_ints, attr_str, initializer, int64s, model_of, node, push_shifted,
    push_weighted_sum, stored, value_info, write_model,
};
use crate::regflow::RegFlow;

/// Largest ORT-vs-tch difference accepted (face_out in [0,1]; flow in pixels).
pub const MAX_DIFF: f32 = 2e-3;

/// Gathers `table` by expression as `out`, cast to float when stored as float16.
fn push_gather(g: &mut GraphProto, table: &str, out: &str, fp16: bool) {
    let gathered = if fp16 {
        format!("{out}_h")
    } else {
        out.to_string()
    };
    g.node.push(node(
        "Gather",
        &[table, "expression"],
        &gathered,
        vec![attr_int("axis", 0)],
    ));
    if fp16 {
        g.node.push(node(
            "Cast",
            &[&gathered],
            out,
            vec![attr_int("to", DataType::FLOAT as i64)],
        ));
    }
}

/// The format-2 graph of a fitted RegFlow.
pub fn build(model: &RegFlow, fp16: bool) -> Result<onnx_protobuf::ModelProto> {
    let s = model.app_w.size()[3];
    let grid = model.flow_w.size()[3];
    let cell = s / grid;
    let k = model.meta.flow_k;
    let kk = model.flow_w.size()[2];
    let mut g = GraphProto::new();
    g.name = "reggan_regflow".into();
    g.input = vec![
        value_info("face", DataType::FLOAT, &[3, s, s]),
        value_info("expression", DataType::INT64, &[]),
    ];
    g.output = vec![
        value_info("face_out", DataType::FLOAT, &[3, s, s]),
        value_info("flow", DataType::FLOAT, &[2, s, s]),
    ];
    let luma = Tensor::from_slice(&LUMA).view([1, 3, 1, 1]);
    g.initializer = vec![
        initializer("FW", &model.flow_w.narrow(2, 0, kk - 1), false)?,
        initializer("FB", &model.flow_w.select(2, kk - 1), false)?,
        initializer("AW", &model.app_w, fp16)?,
        initializer("AB", &model.app_b, fp16)?,
        initializer("luma_w", &luma, false)?,
        initializer("base_grid", &base_grid(s, tch::Device::Cpu), false)?,
        initializer(
            "resize_scales",
            &Tensor::from_slice(&[1f32, 1.0, cell as f32, cell as f32]),
            false,
        )?,
        initializer("px_to_grid", &Tensor::from_slice(&[2.0 / s as f32]), false)?,
        int64s("axis1", &[1]),
        int64s("axis2", &[2]),
        crate::onnx_export::scalar_f32("zero", 0.0),
        crate::onnx_export::scalar_f32("one", 1.0),
    ];

    // Flow on the grid from the luma's neighbourhoods.
    g.node
        .push(node("Conv", &["face", "luma_w"], "luma", vec![]));
    g.node.push(node(
        "AveragePool",
        &["luma"],
        "luma_grid",
        vec![
            attr_ints("kernel_shape", &[cell, cell]),
            attr_ints("strides", &[cell, cell]),
        ],
    ));
    push_gather(&mut g, "FB", "FB_g", false);
    if k == 0 {
        g.node
            .push(node("Identity", &["FB_g"], "flow_grid", vec![]));
    } else {
        push_shifted(&mut g, "luma_grid", k, grid, "f_", "f_stack"); // [N,1,k²,G,G]
        push_gather(&mut g, "FW", "FW_g", false); // [N,2,k²,G,G]
        push_weighted_sum(&mut g, "f_stack", "FW_g", "FB_g", "f_", "flow_grid");
    }
    g.node.push(node(
        "Resize",
        &["flow_grid", "", "resize_scales"],
        "flow",
        vec![
            attr_str("mode", "linear"),
            attr_str("coordinate_transformation_mode", "half_pixel"),
        ],
    ));

    // Warp the face by the flow (backward: out(x) = face(x + flow(x))).
    g.node.push(node(
        "Transpose",
        &["flow"],
        "flow_nhwc",
        vec![attr_ints("perm", &[0, 2, 3, 1])],
    ));
    g.node.push(node(
        "Mul",
        &["flow_nhwc", "px_to_grid"],
        "flow_norm",
        vec![],
    ));
    g.node.push(node(
        "Add",
        &["flow_norm", "base_grid"],
        "sample_grid",
        vec![],
    ));
    g.node.push(node(
        "GridSample",
        &["face", "sample_grid"],
        "warped",
        vec![
            attr_str("mode", "bilinear"),
            attr_str("padding_mode", "border"),
            attr_int("align_corners", 0),
        ],
    ));

    // Appearance: MR on the warped face.
    push_shifted(
        &mut g,
        "warped",
        model.meta.appearance_k,
        s,
        "a_",
        "a_stack",
    );
    push_gather(&mut g, "AW", "AW_g", fp16);
    push_gather(&mut g, "AB", "AB_g", fp16);
    push_weighted_sum(&mut g, "a_stack", "AW_g", "AB_g", "a_", "a_biased");
    g.node.push(node(
        "Clip",
        &["a_biased", "zero", "one"],
        "face_out",
        vec![],
    ));
    Ok(model_of(g))
}

/// The model.json of a RegFlow model.
pub fn manifest(model: &RegFlow, fp16: bool) -> Manifest {
    let m = &model.meta;
    Manifest {
        format_version: reggan::model::FORMAT_VERSION_FLOW,
        family: "flow".into(),
        method: "regflow".into(),
        crop_size: m.crop_size,
        template: m.template.clone(),
        expressions: m.targets.clone(),
        normalization: "rgb01".into(),
        outputs: vec!["face_out".into(), "flow".into()],
        params: json!({
            "flow_grid": m.grid,
            "flow_k": m.flow_k,
            "flow_lambda": m.flow_lambda,
            "appearance_k": m.appearance_k,
            "appearance_lambda": m.appearance_lambda,
            "appearance_weights_dtype": if fp16 { "float16" } else { "float32" },
            "flow_estimator": "OpenCV DIS (medium preset, patch 8, stride 3, 10 variational iterations)",
        }),
        training: json!({
            "data": TFEID_NAME,
            "licence": TFEID_LICENCE,
            "datasets": m.datasets,
            "pairs": "every crop of a performer to every crop of the same performer with the target expression (any source expression, neutral included); mirrored copies for the flow layer",
            "train_subjects": m.train_subjects,
            "val_subjects": m.val_subjects,
            "train_pairs": m.train_pairs,
            "split": "by subject: per data set, subjects sorted, every 5th is validation",
            "seconds": m.seconds,
        }),
        trainer_version: format!("reggan-trainer {}", env!("CARGO_PKG_VERSION")),
        quality: json!({
            "flow_val_epe2_px2": "squared endpoint error per 4x4 cell against DIS flow, [neutral sources, other sources]",
            "flow_val_epe2": m.flow_val_epe2,
            "zero_flow_val_epe2": m.zero_flow_val_epe2,
            "val_mse_metric": "mean squared error of 4x4-block means (RGB in [0,1]) over every (source, target) pair of the validation performers",
            "val_mse_identity": m.val_mse_identity,
            "val_mse_warp_only": m.val_mse_warp,
            "val_mse": m.val_mse,
        }),
    }
}

/// Validation faces (one per performer in turn, any expression) and a target each.
fn verification_batch(model: &RegFlow, n: i64) -> Result<(Tensor, Vec<i64>)> {
    let cache = Path::new(&model.meta.cache);
    let e = model.meta.targets.len() as i64;
    let s = model.meta.crop_size as i64;
    let faces = match crate::data::Index::read(cache) {
        Ok(index) => {
            let people = crate::regflow::load_people(
                cache,
                &index,
                &model.meta.val_subjects,
                &model.meta.datasets,
            )?;
            let all: Vec<Tensor> = people
                .iter()
                .flat_map(|p| p.crops.values().map(|t| t.get(0)))
                .collect();
            let all = Tensor::stack(&all, 0);
            all.index_select(
                0,
                &Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(all.size()[0]),
            )
        }
        Err(err) => {
            eprintln!("no cached validation crops ({err:#}); verifying on random faces");
            Tensor::rand([n, 3, s, s], (Kind::Float, tch::Device::Cpu))
        }
    };
    Ok((faces, (0..n).map(|i| i % e).collect()))
}

/// For previews: per validation performer, its first neutral face and its first
/// face of another expression (a non-neutral source).
pub fn preview_faces(model: &RegFlow) -> Result<Tensor> {
    let cache = Path::new(&model.meta.cache);
    let index = crate::data::Index::read(cache)?;
    let people = crate::regflow::load_people(
        cache,
        &index,
        &model.meta.val_subjects,
        &model.meta.datasets,
    )?;
    let mut faces = Vec::new();
    for p in &people {
        for (e, t) in &p.crops {
            if e == "neutral" || e == "happy" {
                faces.push(t.get(0));
            }
        }
    }
    Ok(Tensor::stack(&faces, 0))
}

/// Largest |ORT - tch| of face_out and of flow.
pub fn max_diffs(dir: &Path, model: &RegFlow, faces: &Tensor, exprs: &[i64]) -> Result<(f32, f32)> {
    let mut ort = ExpressionModel::load(dir, Device::Cpu, 1)?;
    let out = ort.run_with_flow(to_array(faces)?.view(), exprs)?;
    let (face, flow) = tch::no_grad(|| model.forward(faces, exprs));
    let diff = |a: &ndarray::Array4<f32>, b: &Tensor| -> Result<f32> {
        let b = to_array(b)?;
        Ok(a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max))
    };
    let ort_flow = out
        .flow
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("ONNX Runtime returned no flow"))?;
    Ok((diff(&out.face, &face)?, diff(ort_flow, &flow)?))
}

/// Writes model.onnx + model.json into `dir` and verifies them; returns file size.
pub fn export(model: &RegFlow, dir: &Path, fp16: bool) -> Result<u64> {
    // Verify against the weights as stored (fp16 rounding is not an export error).
    let stored_model = RegFlow {
        meta: model.meta.clone(),
        flow_w: model.flow_w.shallow_clone(),
        app_w: stored(&model.app_w, fp16),
        app_b: stored(&model.app_b, fp16),
    };
    let size = write_model(&build(model, fp16)?, dir)?;
    manifest(model, fp16).write(dir)?;
    println!(
        "wrote {} ({:.2} MB) and model.json",
        dir.join("model.onnx").display(),
        size as f64 / 1e6
    );
    let (faces, exprs) = verification_batch(model, 2 * model.meta.targets.len() as i64)?;
    let (dface, dflow) = max_diffs(dir, &stored_model, &faces, &exprs)?;
    println!(
        "ONNX Runtime vs tch on {} faces (every target): max abs diff face_out {dface:.2e}, flow {dflow:.2e} px",
        exprs.len()
    );
    if dface > MAX_DIFF || dflow > 10.0 * MAX_DIFF || dface.is_nan() || dflow.is_nan() {
        bail!("exported model differs from tch (face_out {dface}, flow {dflow})");
    }
    Ok(size)
}
