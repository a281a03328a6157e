//! The batched MR solve against an independent per-pixel solve in plain f64 Rust.

use std::collections::BTreeMap;

use reggan_trainer::data::Subject;
use reggan_trainer::regression::{fit_layer, Sweep};
use tch::{Kind, Tensor};

const S: i64 = 7;

/// Random subjects: (neutrals, happy targets) per subject, one subject without targets.
fn random_subjects(seed: i64) -> Vec<Subject> {
    tch::manual_seed(seed);
    let shapes = [(2, 3), (1, 2), (3, 1), (2, 0)];
    shapes
        .iter()
        .enumerate()
        .map(|(i, &(nn, nt))| {
            let neutral = Tensor::rand([nn, 3, S, S], (Kind::Float, tch::Device::Cpu));
            // Targets depend on the neutral (plus noise) so the fit is not trivial.
            let mut targets = BTreeMap::new();
            if nt > 0 {
                let t = neutral.get(0).unsqueeze(0).repeat([nt, 1, 1, 1]) * 0.7
                    + Tensor::rand([nt, 3, S, S], (Kind::Float, tch::Device::Cpu)) * 0.3;
                targets.insert("happy".to_string(), t);
            }
            Subject {
                name: format!("s{i}"),
                neutral,
                targets,
            }
        })
        .collect()
}

fn pixels(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).contiguous().flatten(0, -1)).unwrap()
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn gauss(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// w for one (channel, y, x), from explicitly enumerated pairs and edge clamping.
fn direct(subjects: &[Subject], k: usize, lambda: f64, c: usize, y: i64, x: i64) -> Vec<f64> {
    let r = (k / 2) as i64;
    let kk = k * k + 1;
    let (mut ata, mut atb) = (vec![vec![0.0; kk]; kk], vec![0.0; kk]);
    let at = |img: &[f64], n: usize, yy: i64, xx: i64| {
        let (yy, xx) = (yy.clamp(0, S - 1), xx.clamp(0, S - 1));
        img[n * (3 * S * S) as usize + c * (S * S) as usize + (yy * S + xx) as usize]
    };
    for subj in subjects {
        let Some(t) = subj.targets.get("happy") else {
            continue;
        };
        let (nv, tv) = (pixels(&subj.neutral), pixels(t));
        for n in 0..subj.neutral.size()[0] as usize {
            for m in 0..t.size()[0] as usize {
                let mut row: Vec<f64> = (0..k as i64)
                    .flat_map(|dy| (0..k as i64).map(move |dx| (dy, dx)))
                    .map(|(dy, dx)| at(&nv, n, y + dy - r, x + dx - r))
                    .collect();
                row.push(1.0);
                let target = at(&tv, m, y, x);
                for i in 0..kk {
                    atb[i] += row[i] * target;
                    for j in 0..kk {
                        ata[i][j] += row[i] * row[j];
                    }
                }
            }
        }
    }
    for (i, row) in ata.iter_mut().enumerate().take(kk - 1) {
        row[i] += lambda;
    }
    gauss(ata, atb)
}

fn check(k: usize, lambda: f64) {
    let subjects = random_subjects(k as i64);
    let layer = fit_layer(&subjects, "happy", k, lambda).unwrap();
    assert_eq!(layer.w.size(), [3, (k * k) as i64, S, S]);
    // Corners and edges exercise the replicated padding; the centre the plain case.
    for &(c, y, x) in &[
        (0usize, 0i64, 0i64),
        (1, 3, 3),
        (2, S - 1, 2),
        (0, 1, S - 1),
        (2, S - 1, S - 1),
    ] {
        let want = direct(&subjects, k, lambda, c, y, x);
        let mut got: Vec<f64> = (0..(k * k) as i64)
            .map(|j| layer.w.double_value(&[c as i64, j, y, x]))
            .collect();
        got.push(layer.b.double_value(&[c as i64, y, x]));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-4,
                "k={k} λ={lambda} pixel ({c},{y},{x}): batched {got:?} vs direct {want:?}"
            );
        }
    }
}

#[test]
fn batched_solve_matches_direct_solve_k3() {
    check(3, 0.1);
}

#[test]
fn batched_solve_matches_direct_solve_k5() {
    check(5, 1.0);
}

#[test]
fn batched_solve_matches_direct_solve_pixel_rr() {
    check(1, 0.01);
}

#[test]
fn layer_fitted_on_noiseless_linear_targets_recovers_them() {
    // t = 0.5 x + 0.2 exactly: the fit must reproduce it (tiny λ).
    let subjects: Vec<Subject> = (0..3)
        .map(|i| {
            let neutral = Tensor::rand([2, 3, S, S], (Kind::Float, tch::Device::Cpu));
            let t = neutral.get(0).unsqueeze(0) * 0.5 + 0.2;
            Subject {
                name: format!("s{i}"),
                neutral: neutral.narrow(0, 0, 1),
                targets: BTreeMap::from([("happy".into(), t)]),
            }
        })
        .collect();
    let layer = fit_layer(&subjects, "happy", 1, 1e-9).unwrap();
    let x = &subjects[0].neutral;
    let err = (layer.apply(x) - (x * 0.5 + 0.2))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-4, "error {err}");
}

#[test]
fn sweep_prefers_smaller_k_within_tolerance() {
    let sweep = Sweep {
        ks: vec![1, 3, 5],
        lambdas: vec![0.1, 1.0],
        expressions: vec!["happy".into()],
        mse: vec![
            vec![vec![0.020, 0.021]],
            vec![vec![0.0101, 0.0105]],
            vec![vec![0.0110, 0.0100]],
        ],
    };
    let (ki, li) = sweep.choose(0.01 + 1e-9);
    assert_eq!((sweep.ks[ki], li), (3, vec![0]));
    let (ki, li) = sweep.choose(0.001);
    assert_eq!((sweep.ks[ki], li), (5, vec![1]));
}
