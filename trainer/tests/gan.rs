//! GAN generators: ONNX export parity with tch, training steps, checkpoints, data errors.
//! Tiny configs at 32 px so the whole file runs in seconds on a CPU.

use std::collections::BTreeMap;
use std::path::PathBuf;

use reggan_trainer::data::Subject;
use reggan_trainer::gan::export::{build, manifest, max_diff, reference, write};
use reggan_trainer::gan::train::{
    sample_any_pairs, Data, ExpressionLayer, Mr, Rng, State, Trainer,
};
use reggan_trainer::gan::{Nets, RunConfig};
use tch::{Device, Kind, Tensor};

const S: i64 = 32;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reggan-gan-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn random_mr() -> Mr {
    tch::manual_seed(7);
    // Near-identity MR: centre tap ~1, other taps small, plus a bias.
    let w = Tensor::randn([6, 3, 9, S, S], (Kind::Float, Device::Cpu)) * 0.05;
    let _ = w.narrow(2, 4, 1).f_add_scalar_(0.8).unwrap();
    let b = Tensor::randn([6, 3, S, S], (Kind::Float, Device::Cpu)) * 0.05;
    Mr { w, b, k: 3 }
}

/// Every generator variable replaced by random values (a zero-initialised last layer
/// would make the parity check trivial).
fn randomise(nets: &Nets) {
    tch::no_grad(|| {
        for (_, mut v) in nets.gvs.variables() {
            let r = Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.2;
            v.copy_(&r);
        }
    });
}

fn tiny(model: &str) -> RunConfig {
    let mut c = RunConfig::new(model, "tiny", S).unwrap();
    c.batch = 2;
    c
}

fn subjects() -> Vec<Subject> {
    tch::manual_seed(3);
    let r = |n| Tensor::rand([n, 3, S, S], (Kind::Float, Device::Cpu));
    (0..3)
        .map(|i| Subject {
            name: format!("s{i}"),
            neutral: r(2),
            targets: BTreeMap::from([
                ("happy".to_string(), r(2)),
                ("sad".to_string(), r(1)),
                ("surprised".to_string(), r(1)),
            ]),
        })
        .collect()
}

fn export_parity(model: &str) -> (f32, Tensor) {
    let cfg = tiny(model);
    tch::manual_seed(11);
    let nets = Nets::new(&cfg, Device::Cpu);
    randomise(&nets);
    let mr = (model == "reggan").then(|| ExpressionLayer::Mr(random_mr()));
    let dir = tmp(&format!("parity-{model}"));
    write(&nets, mr.as_ref(), S, false, &dir).unwrap();
    manifest(
        &cfg,
        &State::default(),
        S as usize,
        reggan::Template::lsrf(S as usize),
        false,
        serde_json::json!({}),
    )
    .write(&dir)
    .unwrap();
    tch::manual_seed(5);
    let faces = Tensor::rand([6, 3, S, S], (Kind::Float, Device::Cpu));
    let exprs: Vec<i64> = (0..6).collect();
    let diff = max_diff(&dir, &nets, mr.as_ref(), &faces, &exprs, false).unwrap();
    // Same face, two expressions, through ONNX Runtime.
    let mut m = reggan::ExpressionModel::load(&dir, reggan::Device::Cpu, 1).unwrap();
    let two = faces.narrow(0, 0, 1).repeat([2, 1, 1, 1]);
    let y = m
        .run(
            reggan_trainer::export::to_array(&two).unwrap().view(),
            &[0, 3],
        )
        .unwrap();
    let y = Tensor::from_slice(y.as_slice().unwrap()).view([2, 3, S, S]);
    let _ = std::fs::remove_dir_all(&dir);
    (diff, y)
}

#[test]
fn reggan_onnx_matches_refinement_of_mr() {
    let (diff, y) = export_parity("reggan");
    assert!(diff < 1e-4, "ORT vs tch max abs diff {diff}");
    // Different expressions give different MR outputs, hence different results.
    assert!(f64::try_from((y.get(0) - y.get(1)).abs().max()).unwrap() > 1e-3);

    // The graph computes refinement(MR(x, e)): check reference() against both parts.
    let cfg = tiny("reggan");
    let nets = Nets::new(&cfg, Device::Cpu);
    randomise(&nets);
    let mr = random_mr();
    let x = Tensor::rand([2, 3, S, S], (Kind::Float, Device::Cpu));
    let e = [1i64, 4];
    let direct = nets
        .generate(&mr.apply(&x, &e), &Tensor::from_slice(&e))
        .detach();
    let via = reference(&nets, Some(&ExpressionLayer::Mr(mr)), &x, &e, false);
    assert!(f64::try_from((direct - via).abs().max()).unwrap() < 1e-6);
}

#[test]
fn usgan_onnx_parity_and_expression_matters() {
    let (diff, y) = export_parity("usgan");
    assert!(diff < 1e-4, "ORT vs tch max abs diff {diff}");
    assert!(
        f64::try_from((y.get(0) - y.get(1)).abs().max()).unwrap() > 1e-4,
        "expression index is ignored"
    );
}

#[test]
fn sargan_onnx_parity_and_expression_matters() {
    let (diff, y) = export_parity("sargan");
    assert!(diff < 1e-4, "ORT vs tch max abs diff {diff}");
    assert!(
        f64::try_from((y.get(0) - y.get(1)).abs().max()).unwrap() > 1e-4,
        "expression index is ignored"
    );
}

#[test]
fn graph_counts_parameters_like_the_var_store() {
    for model in ["reggan", "usgan", "sargan"] {
        let cfg = tiny(model);
        let nets = Nets::new(&cfg, Device::Cpu);
        let (params, macs, _) = nets.g_cost(S);
        assert_eq!(params, nets.g_params(), "{model}");
        assert!(macs > 0.0);
        let m = build(
            &nets,
            (model == "reggan")
                .then(|| ExpressionLayer::Mr(random_mr()))
                .as_ref(),
            S,
            false,
        )
        .unwrap();
        assert!(m.graph.node.iter().any(|n| n.op_type == "Conv"));
    }
}

fn snapshot(nets: &Nets) -> BTreeMap<String, Tensor> {
    nets.gvs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

#[test]
fn a_training_step_changes_the_generator_and_stays_finite() {
    let data = subjects();
    for model in ["reggan", "usgan", "sargan"] {
        let mut t = Trainer::new(
            tiny(model),
            (model == "reggan").then(|| ExpressionLayer::Mr(random_mr())),
            Device::Cpu,
        )
        .unwrap();
        let before = snapshot(&t.nets);
        let losses = t.step(&data).unwrap();
        assert!(
            losses.values().all(|v| v.is_finite()),
            "{model}: {losses:?}"
        );
        let after = snapshot(&t.nets);
        let changed = before
            .iter()
            .any(|(k, v)| f64::try_from((v - &after[k]).abs().max()).unwrap() > 0.0);
        assert!(changed, "{model}: generator weights did not change");
        for v in after.values() {
            assert!(
                !bool::try_from(v.isnan().any()).unwrap(),
                "{model}: NaN in the generator"
            );
        }
        assert_eq!(t.state.step, 1);
    }
}

#[test]
fn checkpoint_resume_restores_weights_and_step() {
    let data = subjects();
    let dir = tmp("resume");
    let mut t = Trainer::new(tiny("sargan"), None, Device::Cpu).unwrap();
    t.step(&data).unwrap();
    t.step(&data).unwrap();
    t.save(&dir).unwrap();
    let saved = snapshot(&t.nets);
    let mut cfg = tiny("sargan");
    cfg.seed = 99; // different init: resume must overwrite it
    let mut r = Trainer::new(cfg, None, Device::Cpu).unwrap();
    r.resume(&dir).unwrap();
    assert_eq!(r.state.step, 2);
    let restored = snapshot(&r.nets);
    for (k, v) in &saved {
        assert!(v.equal(&restored[k]), "{k} differs after resume");
    }
    // Stepping on from the checkpoint is deterministic in the step counter.
    let a = t.step(&data).unwrap();
    let b = r.step(&data).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_data_folder_is_a_clear_error() {
    let missing = std::env::temp_dir().join("reggan-gan-test-no-such-folder");
    let err = format!(
        "{:#}",
        Data::load(&missing).err().expect("missing folder accepted")
    );
    assert!(err.contains("does not exist"), "{err}");
    let empty = tmp("empty-cache");
    let err = format!(
        "{:#}",
        Data::load(&empty).err().expect("empty folder accepted")
    );
    assert!(
        err.contains("index.json") && err.contains("prepare"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn reggan_needs_mr_weights() {
    assert!(Trainer::new(tiny("reggan"), None, Device::Cpu).is_err());
}

#[test]
fn reggan_pretrains_on_restoration_then_fine_tunes_on_mr_outputs() {
    let data = subjects();
    let mut cfg = tiny("reggan");
    cfg.pretrain_steps = 2;
    let mut t = Trainer::new(cfg, Some(ExpressionLayer::Mr(random_mr())), Device::Cpu).unwrap();
    for step in 0..3 {
        assert_eq!(t.pretraining(), step < 2);
        let losses = t.step(&data).unwrap();
        let restoring = losses.contains_key("restore_pix");
        assert_eq!(restoring, step < 2, "step {step}: {losses:?}");
        assert_eq!(losses.contains_key("g_adv"), step >= 2, "step {step}");
    }
    // The refinement network starts as the identity, so on the first step it returns
    // the degraded crop: its loss is the degradation's own error.
    let mut cfg = tiny("reggan");
    cfg.pretrain_steps = 1;
    let mut t = Trainer::new(cfg, Some(ExpressionLayer::Mr(random_mr())), Device::Cpu).unwrap();
    let first = t.step(&data).unwrap();
    assert!(first["restore_input_pix"] > 0.0);
    assert!(
        (first["restore_pix"] - first["restore_input_pix"]).abs() < 1e-6,
        "{first:?}"
    );
}

#[test]
fn any_source_pairs_start_from_every_expression_and_never_target_their_own() {
    // Every crop of expression i is filled with i/10, so a pair's labels can be read
    // back from its pixels.
    let names = ["neutral", "happy", "sad", "angry"];
    let level = |name: &str| names.iter().position(|n| *n == name).unwrap() as f64 / 10.0;
    let crop = |name: &str| Tensor::full([2, 3, 4, 4], level(name), (Kind::Float, Device::Cpu));
    let subject = Subject {
        name: "s".into(),
        neutral: crop("neutral"),
        targets: names[1..]
            .iter()
            .map(|n| (n.to_string(), crop(n)))
            .collect(),
    };
    let targets: Vec<String> = ["happy", "sad", "angry", "disgusted", "neutral"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (x, y, e) = sample_any_pairs(&[subject], &targets, 400, &mut Rng::new(3));
    let mut sources = std::collections::BTreeSet::new();
    for (i, &ei) in e.iter().enumerate() {
        let xv = x.get(i as i64).mean(Kind::Float).double_value(&[]);
        let yv = y.get(i as i64).mean(Kind::Float).double_value(&[]);
        assert!(
            (yv - level(&targets[ei as usize])).abs() < 1e-6,
            "target crop is not {}",
            targets[ei as usize]
        );
        assert!(
            (xv - yv).abs() > 1e-6,
            "pair {i} targets its own expression"
        );
        sources.insert((xv * 10.0).round() as i64);
    }
    assert_eq!(sources.len(), 4, "sources seen: {sources:?}");
    assert!(
        !e.contains(&3),
        "disgusted has no crop, so it is never a target"
    );
}
