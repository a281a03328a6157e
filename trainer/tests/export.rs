//! ONNX export parity: the exported graph, run by the core library's ONNX Runtime
//! loader, must compute what tch computes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reggan::{Device, ExpressionModel, Template};
use reggan_trainer::data::{self, Index, Subject};
use reggan_trainer::export::{self, max_diff, to_array};
use reggan_trainer::onnx_export::stored;
use reggan_trainer::regression::{fit_layer, identity_mse, Layer};
use reggan_trainer::weights::{Meta, Weights};
use tch::{Kind, Tensor};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reggan-trainer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn meta(k: usize, s: usize, expressions: &[&str]) -> Meta {
    let per = |v: f64| {
        expressions
            .iter()
            .map(|e| (e.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    };
    Meta {
        method: "mr".into(),
        k,
        crop_size: s,
        template: Template::lsrf(s),
        expressions: expressions.iter().map(|e| e.to_string()).collect(),
        lambda: per(0.1),
        val_mse: per(0.0),
        identity_mse: per(0.0),
        fit_seconds: per(0.0),
        train_pairs: BTreeMap::new(),
        train_subjects: vec![],
        val_subjects: vec![],
        datasets: vec!["random".into()],
        cache: "/nonexistent".into(),
        sweep: None,
    }
}

/// Layers fitted on random data (so weights are realistic, not just random).
fn random_weights(k: usize, s: i64, expressions: &[&str]) -> Weights {
    tch::manual_seed(7);
    let subjects: Vec<Subject> = (0..4)
        .map(|i| {
            let neutral = Tensor::rand([2, 3, s, s], (Kind::Float, tch::Device::Cpu));
            let targets = expressions
                .iter()
                .map(|e| {
                    (
                        e.to_string(),
                        Tensor::rand([2, 3, s, s], (Kind::Float, tch::Device::Cpu)) * 0.5
                            + &neutral.narrow(0, 0, 1) * 0.5,
                    )
                })
                .collect();
            Subject {
                name: format!("s{i}"),
                neutral,
                targets,
            }
        })
        .collect();
    let layers: Vec<Layer> = expressions
        .iter()
        .map(|e| fit_layer(&subjects, e, k, 0.1).unwrap())
        .collect();
    Weights::from_layers(meta(k, s as usize, expressions), &layers)
}

fn parity(k: usize, fp16: bool) {
    let s = 16;
    let w = random_weights(k, s, &["happy", "sad", "angry"]);
    let dir = temp_dir(&format!("parity-k{k}-fp16-{fp16}"));
    reggan_trainer::onnx_export::write(&w.w, &w.b, k, fp16, &dir).unwrap();
    export::manifest(&w.meta, fp16).write(&dir).unwrap();
    let faces = Tensor::rand([5, 3, s, s], (Kind::Float, tch::Device::Cpu));
    let exprs = [0, 1, 2, 1, 0];
    let diff = max_diff(
        &dir,
        &stored(&w.w, fp16),
        &stored(&w.b, fp16),
        k,
        &faces,
        &exprs,
    )
    .unwrap();
    assert!(
        diff < 1e-5,
        "k={k} fp16={fp16}: ORT vs tch max abs diff {diff}"
    );
    // The graph really depends on the expression: another index changes the output.
    let other = max_diff(
        &dir,
        &stored(&w.w, fp16),
        &stored(&w.b, fp16),
        k,
        &faces,
        &[1, 2, 0, 0, 1],
    )
    .unwrap();
    let mut model = ExpressionModel::load(&dir, Device::Cpu, 1).unwrap();
    let a = model.run(to_array(&faces).unwrap().view(), &exprs).unwrap();
    let b = model
        .run(to_array(&faces).unwrap().view(), &[1, 2, 0, 0, 1])
        .unwrap();
    assert!(
        other < 1e-5 && (&a - &b).iter().any(|v| v.abs() > 1e-3),
        "expression index has no effect"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn onnx_matches_tch_k3() {
    parity(3, false);
}

#[test]
fn onnx_matches_tch_k5_fp16() {
    parity(5, true);
}

#[test]
fn onnx_matches_tch_pixel_rr() {
    parity(1, false);
}

#[test]
fn wrong_expression_index_is_rejected() {
    let w = random_weights(3, 16, &["happy", "sad"]);
    let dir = temp_dir("bad-index");
    reggan_trainer::onnx_export::write(&w.w, &w.b, 3, false, &dir).unwrap();
    export::manifest(&w.meta, false).write(&dir).unwrap();
    let mut model = ExpressionModel::load(&dir, Device::Cpu, 1).unwrap();
    let faces = ndarray::Array4::<f32>::from_elem((1, 3, 16, 16), 0.5);
    for bad in [2, -1] {
        let err = model
            .run(faces.view(), &[bad])
            .expect_err("index out of range must fail")
            .to_string();
        assert!(
            err.contains("out of range"),
            "unclear error for index {bad}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn tfeid_dir() -> Option<PathBuf> {
    let d = data::data_root().join("tfeid");
    if d.join("index.csv").is_file() {
        Some(d)
    } else {
        eprintln!(
            "SKIPPED: TFEID not found at {} (set REGGAN_DATA)",
            d.display()
        );
        None
    }
}

/// Crops three TFEID subjects with the real detector and aligner.
fn real_cache(name: &str) -> Option<(PathBuf, Index)> {
    let dir = tfeid_dir()?;
    let keep = ["tfeid/01", "tfeid/02", "tfeid/05"];
    let sources: Vec<_> = data::tfeid_sources(&dir, false)
        .unwrap()
        .into_iter()
        .filter(|s| keep.contains(&s.subject.as_str()))
        .collect();
    let cache = temp_dir(name);
    let index = data::prepare(&sources, &cache).unwrap();
    assert!(
        index.skipped.is_empty(),
        "faces not found in {:?}",
        index.skipped
    );
    Some((cache, index))
}

#[test]
fn onnx_matches_tch_on_real_crops() {
    let Some((cache, index)) = real_cache("real") else {
        return;
    };
    let subjects = data::load_subjects(
        &cache,
        &index,
        &["tfeid/01".into(), "tfeid/02".into(), "tfeid/05".into()],
        &["tfeid".into()],
    )
    .unwrap();
    let exprs = ["happy", "surprised"];
    let layers: Vec<Layer> = exprs
        .iter()
        .map(|e| fit_layer(&subjects, e, 3, 1.0).unwrap())
        .collect();
    let mut m = meta(3, 128, &exprs);
    m.cache = cache.display().to_string();
    m.val_subjects = vec!["tfeid/05".into()];
    m.datasets = vec!["tfeid".into()];
    let w = Weights::from_layers(m, &layers);
    let out = cache.join("model");
    let (diff, size) = export::export(&w, &out, true).unwrap();
    assert!(diff < 1e-5, "max abs diff {diff}");
    assert!(
        size > 2 * 2 * 9 * 3 * 128 * 128,
        "fp16 weights missing? {size} bytes"
    );
    std::fs::remove_dir_all(&cache).ok();
}

fn shipped_model() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mr");
    if d.join("model.onnx").is_file() {
        Some(d)
    } else {
        eprintln!("SKIPPED: no shipped model at {}", d.display());
        None
    }
}

/// The shipped MR model must beat the identity baseline on a held-out subject's real
/// pairs (performer 30 is a validation subject), for every expression.
#[test]
fn shipped_model_beats_identity_on_validation_subject() {
    let Some(model_dir) = shipped_model() else {
        return;
    };
    let Some(dir) = tfeid_dir() else { return };
    let sources: Vec<_> = data::tfeid_sources(&dir, false)
        .unwrap()
        .into_iter()
        .filter(|s| s.subject == "tfeid/30")
        .collect();
    let cache = temp_dir("shipped");
    let index = data::prepare(&sources, &cache).unwrap();
    let subjects =
        data::load_subjects(&cache, &index, &["tfeid/30".into()], &["tfeid".into()]).unwrap();
    let mut model = ExpressionModel::load(&model_dir, Device::Cpu, 1).unwrap();
    let manifest = model.manifest().clone();
    assert!(
        manifest.training["val_subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "tfeid/30"),
        "tfeid/30 must be held out"
    );
    for (i, e) in manifest.expressions.iter().enumerate() {
        let x = &subjects[0].neutral;
        let n = x.size()[0] as usize;
        let y = model
            .run(to_array(x).unwrap().view(), &vec![i as i64; n])
            .unwrap();
        let y = Tensor::from_slice(y.as_slice().unwrap()).view_as(x);
        let (sse, count) =
            reggan_trainer::regression::pair_sse(&subjects, e, |_| y.shallow_clone());
        let (mse, id) = (sse / count, identity_mse(&subjects, e));
        eprintln!("{e}: model {mse:.5} vs identity {id:.5}");
        assert!(
            mse < id,
            "{e}: shipped model MSE {mse} is not below identity {id}"
        );
    }
    std::fs::remove_dir_all(&cache).ok();
}

/// A RegFlow with random weights: flows of a few pixels, an appearance layer near the
/// identity. `cache` does not exist, so `export` verifies on random faces.
fn random_regflow(flow_k: usize, s: i64) -> reggan_trainer::regflow::RegFlow {
    use reggan_trainer::regflow::{targets, FlowSweep, RegFlow, RegFlowMeta, GRID};
    tch::manual_seed(3);
    let t = targets();
    let e = t.len() as i64;
    let kk = if flow_k == 0 {
        1
    } else {
        (flow_k * flow_k + 1) as i64
    };
    let flow_w = Tensor::randn([e, 2, kk, GRID, GRID], (Kind::Float, tch::Device::Cpu)) * 2.0;
    let app_w = Tensor::randn([e, 3, 9, s, s], (Kind::Float, tch::Device::Cpu)) * 0.02;
    let _ = app_w.narrow(2, 4, 1).g_add_scalar_(1.0);
    let app_b = Tensor::randn([e, 3, s, s], (Kind::Float, tch::Device::Cpu)) * 0.02;
    let per = |v: f64| t.iter().map(|x| (x.clone(), v)).collect::<BTreeMap<_, _>>();
    let meta = RegFlowMeta {
        targets: t.clone(),
        grid: GRID,
        flow_k,
        flow_lambda: per(1.0),
        appearance_k: 3,
        appearance_lambda: per(1.0),
        colour_augment: 0,
        ood_lambda: None,
        appearance_mouth_lambda: None,
        neutral_share: None,
        flow_val_epe2: t.iter().map(|x| (x.clone(), [0.0, 0.0])).collect(),
        zero_flow_val_epe2: t.iter().map(|x| (x.clone(), [0.0, 0.0])).collect(),
        val_mse_identity: per(0.0),
        val_mse_warp: per(0.0),
        val_mse: per(0.0),
        train_pairs: BTreeMap::new(),
        flow_sweep: FlowSweep {
            ks: vec![flow_k],
            lambdas: vec![1.0],
            targets: t.clone(),
            epe2: vec![],
            zero: vec![],
        },
        train_subjects: vec![],
        val_subjects: vec![],
        datasets: vec!["tfeid".into()],
        cache: "/nonexistent-reggan-cache".into(),
        crop_size: s as usize,
        template: Template::lsrf(s as usize),
        seconds: BTreeMap::new(),
    };
    RegFlow {
        meta,
        flow_w,
        app_w,
        app_b,
    }
}

/// The format-2 graph (luma -> grid regression -> Resize -> GridSample -> MR) computes
/// in ONNX Runtime what RegFlow::forward computes in tch, for both outputs, and the
/// core loads it as a flow model.
#[test]
fn regflow_onnx_matches_tch_for_face_and_flow() {
    use reggan_trainer::regflow_export;
    for (flow_k, fp16) in [(3, true), (0, false)] {
        let model = random_regflow(flow_k, 128);
        let dir = temp_dir(&format!("regflow-{flow_k}"));
        regflow_export::export(&model, &dir, fp16).unwrap();
        let faces = Tensor::rand([4, 3, 128, 128], (Kind::Float, tch::Device::Cpu));
        let exprs = [0, 3, 5, 6];
        let stored_model = reggan_trainer::regflow::RegFlow {
            meta: model.meta.clone(),
            flow_w: model.flow_w.shallow_clone(),
            app_w: stored(&model.app_w, fp16),
            app_b: stored(&model.app_b, fp16),
        };
        let (dface, dflow) =
            regflow_export::max_diffs(&dir, &stored_model, &faces, &exprs).unwrap();
        eprintln!("flow k {flow_k}: face_out diff {dface:.2e}, flow diff {dflow:.2e} px");
        assert!(dface < 2e-3 && dflow < 2e-3, "face {dface}, flow {dflow}");
        let loaded = ExpressionModel::load(&dir, Device::Cpu, 1).unwrap();
        assert!(loaded.manifest().has_flow());
        assert_eq!(loaded.manifest().format_version, 2);
        assert_eq!(loaded.manifest().expression_index("neutral").unwrap(), 6);
        // The flow really moves pixels: a few pixels on average for these weights.
        let (_, flow) = tch::no_grad(|| stored_model.forward(&faces, &exprs));
        assert!(flow.abs().mean(Kind::Float).double_value(&[]) > 0.5);
    }
}

/// RegGAN on a RegFlow layer exports as one contract-v2 graph: the refinement network
/// after the warp and appearance layer, with the layer's flow still an output; ONNX
/// Runtime computes what tch computes, and a training step on that layer runs.
#[test]
fn reggan_on_regflow_exports_refinement_of_warped_faces_with_flow() {
    use reggan_trainer::gan::export::{manifest, max_diff as gan_max_diff, write};
    use reggan_trainer::gan::train::{ExpressionLayer, State, Trainer};
    use reggan_trainer::gan::{Nets, RunConfig};
    let s = 128;
    let mut cfg = RunConfig::new("reggan", "tiny", s).unwrap();
    cfg.batch = 2;
    cfg.regflow_weights = Some("random".into());
    tch::manual_seed(11);
    let nets = Nets::new(&cfg, tch::Device::Cpu);
    tch::no_grad(|| {
        for (_, mut v) in nets.gvs.variables() {
            v.copy_(&(Tensor::randn(v.size(), (Kind::Float, tch::Device::Cpu)) * 0.2));
        }
    });
    let layer = ExpressionLayer::RegFlow(Box::new(random_regflow(0, s)));
    let dir = temp_dir("reggan-regflow");
    write(&nets, Some(&layer), s, true, &dir).unwrap();
    let template = Template::lsrf(s as usize);
    manifest(
        &cfg,
        &State::default(),
        s as usize,
        template,
        true,
        serde_json::json!({}),
    )
    .write(&dir)
    .unwrap();
    let faces = Tensor::rand([3, 3, s, s], (Kind::Float, tch::Device::Cpu));
    let exprs = [0, 2, 6];
    let diff = gan_max_diff(&dir, &nets, Some(&layer), &faces, &exprs, true).unwrap();
    eprintln!("RegGAN on RegFlow: ORT vs tch max abs diff {diff:.2e}");
    assert!(diff < 1e-3, "ORT vs tch {diff}");
    let mut loaded = ExpressionModel::load(&dir, Device::Cpu, 1).unwrap();
    assert_eq!(loaded.manifest().format_version, 2);
    assert_eq!(loaded.manifest().expression_index("neutral").unwrap(), 6);
    let out = loaded
        .run_with_flow(to_array(&faces).unwrap().view(), &exprs)
        .unwrap();
    let flow = out.flow.expect("the layer's flow is an output");
    let ExpressionLayer::RegFlow(rf) = &layer else {
        unreachable!()
    };
    let (_, want) = tch::no_grad(|| rf.forward(&faces, &exprs));
    let flow_diff = flow
        .iter()
        .zip(to_array(&want).unwrap().iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(flow_diff < 1e-3, "flow differs by {flow_diff} px");

    // Training on the layer: pairs from any source expression; losses finite.
    let r = |n| Tensor::rand([n, 3, s, s], (Kind::Float, tch::Device::Cpu));
    let subjects: Vec<Subject> = (0..2)
        .map(|i| Subject {
            name: format!("s{i}"),
            neutral: r(1),
            targets: BTreeMap::from([("happy".to_string(), r(1)), ("sad".to_string(), r(1))]),
        })
        .collect();
    cfg.pretrain_steps = 0;
    let mut t = Trainer::new(cfg, Some(layer), tch::Device::Cpu).unwrap();
    let losses = t.step(&subjects).unwrap();
    assert!(
        losses.contains_key("g_adv") && losses.values().all(|v| v.is_finite()),
        "{losses:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
