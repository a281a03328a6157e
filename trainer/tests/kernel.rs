//! Pixel-KR: the batched LibTorch solve against an independent direct solve (plain
//! Rust f64 Gaussian elimination of the paper's `(K + λ·diag(1/m)) c = t̄` per pixel),
//! and ONNX export parity against tch.

use std::collections::BTreeMap;
use std::path::PathBuf;

use reggan::Template;
use reggan_trainer::data::Subject;
use reggan_trainer::kernel::{self, solve_kr, KrData, KrMeta, KrWeights};
use reggan_trainer::weights::Meta;
use tch::{Kind, Tensor};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reggan-trainer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Solves A x = b by Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
fn gauss(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for r in col + 1..n {
            let f = a[r][col] / a[col][col];
            for c in col..n {
                a[r][c] -= f * a[col][c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

#[test]
fn batched_solve_matches_direct_solve() {
    tch::manual_seed(3);
    let (m, s) = (7i64, 5i64);
    let x = Tensor::rand([m, 3, s, s], (Kind::Double, tch::Device::Cpu));
    let t = Tensor::rand([m, 3, s, s], (Kind::Double, tch::Device::Cpu));
    // Varied pair counts, one centre without a target (its coefficient must be 0).
    let counts = [3.0, 1.0, 0.0, 2.0, 5.0, 1.0, 4.0];
    for (sigma, lambda) in [(0.1, 0.4), (0.05, 1e-2), (0.5, 1.0)] {
        let c = solve_kr(&x, &t, &counts, sigma, lambda); // [3,M,S,S]
        let mut worst = 0f64;
        for &(ch, py, px) in &[(0i64, 0i64, 0i64), (1, 2, 3), (2, 4, 1), (0, 3, 3)] {
            let xs: Vec<f64> = (0..m).map(|n| x.double_value(&[n, ch, py, px])).collect();
            let ts: Vec<f64> = (0..m).map(|n| t.double_value(&[n, ch, py, px])).collect();
            // Only the centres with targets enter the system.
            let live: Vec<usize> = (0..m as usize).filter(|&n| counts[n] > 0.0).collect();
            let a: Vec<Vec<f64>> = live
                .iter()
                .map(|&i| {
                    live.iter()
                        .map(|&j| {
                            let k = (-(xs[i] - xs[j]).powi(2) / (2.0 * sigma * sigma)).exp();
                            k + if i == j { lambda / counts[i] } else { 0.0 }
                        })
                        .collect()
                })
                .collect();
            let b: Vec<f64> = live.iter().map(|&i| ts[i]).collect();
            let direct = gauss(a, b);
            for n in 0..m as usize {
                let got = c.double_value(&[ch, n as i64, py, px]);
                let want = live.iter().position(|&l| l == n).map_or(0.0, |k| direct[k]);
                worst = worst.max((got - want).abs() / want.abs().max(1.0));
            }
        }
        println!("sigma {sigma} lambda {lambda}: max rel diff {worst:.2e}");
        assert!(worst < 1e-8, "batched solve differs from direct by {worst}");
    }
}

#[test]
fn weighted_centres_equal_kernel_ridge_over_all_pairs() {
    // One pixel, one neutral repeated in m pairs == the weighted system: check that the
    // KrData mean targets + counts reproduce the all-pairs kernel ridge fit.
    tch::manual_seed(5);
    let s = 2i64;
    let subjects: Vec<Subject> = (0..3)
        .map(|i| Subject {
            name: format!("s{i}"),
            neutral: Tensor::rand([1, 3, s, s], (Kind::Float, tch::Device::Cpu)),
            targets: [(
                "happy".to_string(),
                Tensor::rand([i + 1, 3, s, s], (Kind::Float, tch::Device::Cpu)),
            )]
            .into_iter()
            .collect(),
        })
        .collect();
    let data = KrData::new(&subjects, &["happy".into()], 8);
    let (tbar, counts) = &data.targets["happy"];
    let (sigma, lambda) = (0.2, 0.3);
    let c = solve_kr(&data.centres, tbar, counts, sigma, lambda);
    // All pairs: inputs x_i (repeated), targets t_i; KRR predictions at the pair inputs
    // f = K (K + λI)⁻¹ t must equal the weighted model's predictions.
    let (ch, py, px) = (1i64, 1i64, 0i64);
    let mut xs = Vec::new();
    let mut ts = Vec::new();
    for sub in &subjects {
        let t = &sub.targets["happy"];
        for j in 0..t.size()[0] {
            xs.push(sub.neutral.double_value(&[0, ch, py, px]));
            ts.push(t.double_value(&[j, ch, py, px]));
        }
    }
    let k = |a: f64, b: f64| (-(a - b).powi(2) / (2.0 * sigma * sigma)).exp();
    let n = xs.len();
    let a: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| k(xs[i], xs[j]) + if i == j { lambda } else { 0.0 })
                .collect()
        })
        .collect();
    let alpha = gauss(a, ts.clone());
    for sub in &subjects {
        let x0 = sub.neutral.double_value(&[0, ch, py, px]);
        let all_pairs: f64 = (0..n).map(|i| alpha[i] * k(xs[i], x0)).sum();
        let weighted: f64 = (0..data.m())
            .map(|m| {
                c.double_value(&[ch, m, py, px])
                    * k(data.centres.double_value(&[m, ch, py, px]), x0)
            })
            .sum();
        assert!(
            (all_pairs - weighted).abs() < 1e-9,
            "{all_pairs} vs {weighted}"
        );
    }
}

fn small_weights(s: i64, m: i64, expressions: &[&str]) -> KrWeights {
    tch::manual_seed(11);
    let e = expressions.len() as i64;
    let per = |v: f64| {
        expressions
            .iter()
            .map(|x| (x.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    };
    let meta = Meta {
        method: "pixel-kr".into(),
        k: 1,
        crop_size: s as usize,
        template: Template::lsrf(s as usize),
        expressions: expressions.iter().map(|x| x.to_string()).collect(),
        lambda: per(0.4),
        val_mse: per(0.0),
        identity_mse: per(0.0),
        fit_seconds: per(0.0),
        train_pairs: BTreeMap::new(),
        train_subjects: vec![],
        val_subjects: vec![],
        datasets: vec!["random".into()],
        cache: "/nonexistent".into(),
        sweep: None,
    };
    let sigmas = [0.05, 0.2, 0.1];
    KrWeights {
        meta: KrMeta {
            meta,
            centres: m as usize,
            centre_subjects: vec![],
            sigma: per(0.1),
            kr_sweep: vec![],
        },
        x: Tensor::rand([3, m, s, s], (Kind::Float, tch::Device::Cpu)),
        c: (Tensor::rand([e, 3, m, s, s], (Kind::Float, tch::Device::Cpu)) - 0.3) * 0.5,
        g: Tensor::from_slice(
            &sigmas[..e as usize]
                .iter()
                .map(|sg| (-0.5 / (sg * sg)) as f32)
                .collect::<Vec<_>>(),
        ),
    }
}

#[test]
fn onnx_export_matches_tch() {
    let w = small_weights(16, 6, &["happy", "sad", "angry"]);
    for fp16 in [false, true] {
        let dir = temp_dir(&format!("kr-{fp16}"));
        let (diff, bytes) = kernel::export(&w, &dir, fp16).unwrap();
        println!("fp16 {fp16}: {bytes} bytes, max diff {diff:.2e}");
        assert!(diff < 1e-5, "ORT differs from tch by {diff}");
        // Explicit check on faces with mixed expressions in one batch.
        let faces = Tensor::rand([5, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let exprs = [2i64, 0, 1, 1, 2];
        let (x, c) = (
            reggan_trainer::onnx_export::stored(&w.x, fp16),
            reggan_trainer::onnx_export::stored(&w.c, fp16),
        );
        let d = kernel::max_diff(&dir, &x, &c, &w.g, &faces, &exprs).unwrap();
        assert!(d < 1e-5, "mixed batch differs by {d}");
        // Round trip of the weights folder.
        let wd = dir.join("weights");
        w.save(&wd).unwrap();
        assert!(KrWeights::is_kr(&wd));
        let back = KrWeights::load(&wd).unwrap();
        assert_eq!(back.c.size(), w.c.size());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
