//! `reggan-train export-gan`: one ONNX graph per model under the model contract.
//! RegGAN = the expression layer's subgraph (MR from [`crate::onnx_export`], or RegFlow
//! from [`crate::regflow_export`], whose `flow` output stays an output: contract v2)
//! followed by the refinement network; US-GAN / SARGAN = one-hot(expression) tiled and concatenated
//! to the face, then the generator. Verified against tch through `reggan::ExpressionModel`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, Message, ModelProto};
use reggan::{Device, ExpressionModel, Manifest};
use serde_json::json;
use tch::{Kind, Tensor};

use super::onnx::Onnx;
use super::train::{ExpressionLayer, Mr, State};
use super::{Gen, Nets, RunConfig, EXPRESSIONS};
use crate::export::{to_array, TFEID_LICENCE, TFEID_NAME};
use crate::onnx_export;

use onnx_export::value_info;

/// The model contract's graph for a generator (and, for RegGAN, its expression layer;
/// `fp16` stores the layer's weights as float16, the network's weights stay float32).
pub fn build(
    nets: &Nets,
    layer: Option<&ExpressionLayer>,
    size: i64,
    fp16: bool,
) -> Result<ModelProto> {
    let mut g = Onnx::new();
    g.set_shape("face", (3, size, size));
    let mut graph = match (&nets.g, layer) {
        (Gen::Reg(r), Some(layer)) => {
            let base = match layer {
                ExpressionLayer::Mr(mr) => onnx_export::build(&mr.w, &mr.b, mr.k, fp16)?,
                ExpressionLayer::RegFlow(rf) => crate::regflow_export::build(rf, fp16)?,
            };
            let mut graph = base
                .graph
                .into_option()
                .context("layer model without graph")?;
            // The layer's output becomes the refinement network's input.
            for n in graph.node.iter_mut() {
                for o in n.output.iter_mut() {
                    if o == "face_out" {
                        *o = "mr_out".into();
                    }
                }
            }
            g.set_shape("mr_out", (3, size, size));
            let y = r.emit(&mut g, "mr_out");
            g.rename_output(&y, "face_out")?;
            graph.name = match layer {
                ExpressionLayer::Mr(_) => "reggan_mr_refinement",
                ExpressionLayer::RegFlow(_) => "reggan_regflow_refinement",
            }
            .into();
            graph
        }
        (Gen::Reg(_), None) => bail!("RegGAN export needs the expression layer's weights"),
        (Gen::Star(s), _) => {
            let y = s.emit(&mut g, "face", "expression");
            g.rename_output(&y, "face_out")?;
            let mut graph = GraphProto::new();
            graph.name = "reggan_stargan_family".into();
            graph.input = vec![
                value_info("face", DataType::FLOAT, &[3, size, size]),
                value_info("expression", DataType::INT64, &[]),
            ];
            graph.output = vec![value_info("face_out", DataType::FLOAT, &[3, size, size])];
            graph
        }
    };
    if let Some(e) = g.error {
        bail!("graph shapes do not agree: {e}");
    }
    graph.node.extend(g.nodes);
    graph.initializer.extend(g.inits);
    Ok(onnx_export::model_of(graph))
}

/// The layer with its weights as the graph stores them (float16-rounded when `fp16`).
fn as_stored(layer: &ExpressionLayer, fp16: bool) -> ExpressionLayer {
    match layer {
        ExpressionLayer::Mr(mr) => ExpressionLayer::Mr(Mr {
            w: onnx_export::stored(&mr.w, fp16),
            b: onnx_export::stored(&mr.b, fp16),
            k: mr.k,
        }),
        ExpressionLayer::RegFlow(rf) => {
            ExpressionLayer::RegFlow(Box::new(crate::regflow::RegFlow {
                meta: rf.meta.clone(),
                flow_w: rf.flow_w.shallow_clone(),
                app_w: onnx_export::stored(&rf.app_w, fp16),
                app_b: onnx_export::stored(&rf.app_b, fp16),
            }))
        }
    }
}

/// What the exported graph computes, in tch (layer weights as stored when fp16).
pub fn reference(
    nets: &Nets,
    layer: Option<&ExpressionLayer>,
    faces: &Tensor,
    expressions: &[i64],
    fp16: bool,
) -> Tensor {
    tch::no_grad(|| {
        let dev = nets.gvs.device();
        match (&nets.g, layer) {
            (Gen::Reg(r), Some(layer)) => r
                .forward(
                    &as_stored(layer, fp16)
                        .apply(faces, expressions)
                        .to_device(dev),
                )
                .to_device(tch::Device::Cpu),
            _ => nets
                .generate(
                    &faces.to_device(dev),
                    &Tensor::from_slice(expressions).to_device(dev),
                )
                .to_device(tch::Device::Cpu),
        }
    })
}

/// Writes model.onnx; returns its size.
pub fn write(
    nets: &Nets,
    layer: Option<&ExpressionLayer>,
    size: i64,
    fp16: bool,
    dir: &Path,
) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = build(nets, layer, size, fp16)?.write_to_bytes()?;
    let path = dir.join("model.onnx");
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// Largest |ORT - tch| over the given faces (through the core's loader, CPU).
pub fn max_diff(
    dir: &Path,
    nets: &Nets,
    layer: Option<&ExpressionLayer>,
    faces: &Tensor,
    expressions: &[i64],
    fp16: bool,
) -> Result<f32> {
    let mut model = ExpressionModel::load(dir, Device::Cpu, 1)?;
    let ort = model.run(to_array(faces)?.view(), expressions)?;
    let reference = to_array(&reference(nets, layer, faces, expressions, fp16))?;
    Ok(ort
        .iter()
        .zip(reference.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max))
}

pub fn manifest(
    cfg: &RunConfig,
    state: &State,
    size: usize,
    template: reggan::Template,
    fp16: bool,
    extra: serde_json::Value,
) -> Manifest {
    let flow = cfg.regflow_weights.is_some();
    Manifest {
        format_version: if flow {
            reggan::model::FORMAT_VERSION_FLOW
        } else {
            reggan::model::FORMAT_VERSION
        },
        family: "gan".into(),
        method: cfg.model.clone(),
        crop_size: size,
        template,
        expressions: if flow {
            crate::regflow::targets()
        } else {
            EXPRESSIONS.iter().map(|s| s.to_string()).collect()
        },
        normalization: "rgb01".into(),
        params: json!({
            "expression_layer": if flow { "regflow" } else if cfg.model == "reggan" { "mr" } else { "none" },
            "config": cfg.config,
            "refiner": cfg.refiner,
            "generator": cfg.star,
            "generator_parameters": state.g_params,
            "generator_macs_per_face": state.g_macs_per_face,
            "layer_weights_dtype": if cfg.model == "reggan" { Some(if fp16 { "float16" } else { "float32" }) } else { None },
        }),
        training: json!({
            "data": TFEID_NAME,
            "licence": TFEID_LICENCE,
            "steps": state.step,
            "batch": cfg.batch,
            "wall_seconds": state.elapsed_s,
            "device": state.device,
            "seed": cfg.seed,
            "lambdas": cfg.lambdas,
            "n_critic": cfg.n_critic,
            "lr_g": cfg.lr_g,
            "lr_d": cfg.lr_d,
            "perceptual_backbone": cfg.perceptual,
            "pretraining": if cfg.pretrain_steps > 0 {
                format!(
                    "restoration of regression-like degraded crops of the training subjects{}, {} steps (no FFHQ here)",
                    if cfg.restore_cache.is_some() { " and of the unpaired faces of restore_cache" } else { "" },
                    cfg.pretrain_steps
                )
            } else {
                "none".to_string()
            },
            "mr_weights": cfg.mr_weights,
            "regflow_weights": cfg.regflow_weights,
            "restore_cache": cfg.restore_cache,
            "pairs": if flow { "every source expression (neutral included) to every other target, the target crop of the same performer" } else { "neutral to each expression" },
            "extra": extra,
        }),
        trainer_version: format!("reggan-trainer {}", env!("CARGO_PKG_VERSION")),
        quality: json!({
            "metric": "mean L1 (RGB in [0,1]) to the real expression photo over validation subjects' (first neutral, first target) pairs",
            "val": state.val,
        }),
        outputs: if flow {
            vec!["face_out".into(), "flow".into()]
        } else {
            Vec::new()
        },
    }
}

/// `export-gan`: model.onnx + model.json from a run folder, verified on validation crops.
pub fn export_run(run: &Path, out: &Path, fp16: bool) -> Result<()> {
    // Weights and state from the same checkpoint, even after an interrupted save.
    super::recover_checkpoint(run)?;
    let cfg = RunConfig::read(run)?;
    let sp = run.join("state.json");
    let state: State = serde_json::from_str(
        &std::fs::read_to_string(&sp).with_context(|| format!("cannot read {}", sp.display()))?,
    )?;
    let mut nets = Nets::new(&cfg, tch::Device::Cpu);
    nets.gvs
        .load(run.join("gen.safetensors"))
        .with_context(|| format!("cannot load {}/gen.safetensors", run.display()))?;
    let layer = if cfg.model == "reggan" {
        Some(ExpressionLayer::load(
            cfg.mr_weights.as_deref(),
            cfg.regflow_weights.as_deref(),
        )?)
    } else {
        None
    };
    let size = write(&nets, layer.as_ref(), cfg.size, fp16, out)?;
    let cache = Path::new(&cfg.cache);
    let template = crate::data::Index::read(cache)
        .map(|i| i.template)
        .unwrap_or_else(|_| reggan::Template::lsrf(cfg.size as usize));
    // Validation neutrals, each with every expression.
    let faces = match super::train::Data::load(cache) {
        Ok(d) => Tensor::stack(
            &d.val.iter().map(|s| s.neutral.get(0)).collect::<Vec<_>>(),
            0,
        ),
        Err(e) => {
            eprintln!("no validation crops ({e:#}); verifying on random faces");
            Tensor::rand([4, 3, cfg.size, cfg.size], (Kind::Float, tch::Device::Cpu))
        }
    };
    let e = layer
        .as_ref()
        .map(|l| l.targets().len())
        .unwrap_or(EXPRESSIONS.len()) as i64;
    let n = faces.size()[0];
    let faces = faces.repeat_interleave_self_int(e, 0, None);
    let exprs: Vec<i64> = (0..n * e).map(|i| i % e).collect();
    // Parity is checked before model.json exists? No: the loader needs model.json.
    let ms_placeholder = json!({});
    manifest(
        &cfg,
        &state,
        cfg.size as usize,
        template.clone(),
        fp16,
        ms_placeholder,
    )
    .write(out)?;
    let diff = max_diff(out, &nets, layer.as_ref(), &faces, &exprs, fp16)?;
    println!(
        "ONNX Runtime vs tch on {} validation faces x expressions: max abs diff {diff:.3e}",
        exprs.len()
    );
    if diff > crate::export::MAX_DIFF || diff.is_nan() {
        bail!(
            "exported model differs from tch by {diff} (> {})",
            crate::export::MAX_DIFF
        );
    }
    let ms = crate::export::cpu_ms_per_face(out, cfg.size as usize)?;
    let extra = json!({
        "onnx_bytes": size,
        "ort_vs_tch_max_abs_diff": diff,
        "ort_cpu_ms_per_face_1_thread": ms,
    });
    manifest(&cfg, &state, cfg.size as usize, template, fp16, extra).write(out)?;
    println!(
        "wrote {} ({:.2} MB); generator {} parameters, {:.3} GMAC ({:.3} GFLOP) per face; ONNX Runtime CPU (1 thread) {ms:.2} ms per face",
        out.join("model.onnx").display(),
        size as f64 / 1e6,
        state.g_params,
        state.g_macs_per_face / 1e9,
        2.0 * state.g_macs_per_face / 1e9
    );
    Ok(())
}
