//! `import-lsrf`: the imported model, run by the core library's ONNX Runtime loader on
//! real aligned face crops, must equal the authors' formula computed independently,
//! straight from the CSR arrays (loop over rows), in both modes; bad files must give
//! clear errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use reggan::{Device, ExpressionModel};
use reggan_trainer::lsrf::{self, Mode};
use reggan_trainer::npz::read_npz;
use tch::{Kind, Tensor};

fn lsrf_dir() -> PathBuf {
    reggan_trainer::data::data_root().join("reference/lsrf")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reggan-trainer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Real aligned crops [N,3,128,128]: TFEID neutral crops of the prepare cache, else the
/// test photo detected and aligned with the core library.
fn real_crops() -> Option<Tensor> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/reggan-train/cache");
    if let Ok(index) = reggan_trainer::data::Index::read(&cache) {
        let crops: Vec<Tensor> = index
            .entries
            .iter()
            .filter(|e| e.expression == "neutral")
            .step_by(9)
            .take(6)
            .map(|e| reggan_trainer::data::load_crop(&cache.join(&e.path)).unwrap())
            .collect();
        if !crops.is_empty() {
            return Some(Tensor::stack(&crops, 0));
        }
    }
    let photo = std::env::var_os("REGGAN_TEST_IMAGE")?;
    let mut det = reggan::FaceDetector::new(reggan::DetectorKind::Auto).ok()?;
    let crop =
        reggan_trainer::data::crop_face(&mut det, &reggan::Template::lsrf(128), Path::new(&photo))
            .ok()??;
    let t = Tensor::from_slice(&crop.data)
        .view([128, 128, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0;
    Some(t.unsqueeze(0))
}

/// The authors' formula from the raw CSR arrays: x' = minmax(x) (faithful), then for
/// each channel and row p: y = Σ data[k]·x'[indices[k]] (+ data[k] where indices[k]
/// is the bias column), then minmax(y) (faithful) or clip (video). f64 throughout.
fn formula(npz: &Path, face: &[f32], mode: Mode) -> Vec<f64> {
    let a = read_npz(npz).unwrap();
    let indptr = a["indptr"].ints("indptr").unwrap();
    let indices = a["indices"].ints("indices").unwrap();
    let data = a["data"].floats("data").unwrap();
    let rows = indptr.len() - 1;
    let norm = |v: &mut Vec<f64>| {
        let mn = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let mx = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        v.iter_mut().for_each(|x| *x = (*x - mn) / (mx - mn));
    };
    let mut x: Vec<f64> = face.iter().map(|&v| v as f64).collect();
    if mode == Mode::Faithful {
        norm(&mut x);
    }
    let mut y = Vec::with_capacity(3 * rows);
    for c in 0..3 {
        let xc = &x[c * rows..(c + 1) * rows];
        for p in 0..rows {
            let mut acc = 0.0;
            for k in indptr[p] as usize..indptr[p + 1] as usize {
                let col = indices[k] as usize;
                acc += data[k] * if col == rows { 1.0 } else { xc[col] };
            }
            y.push(acc);
        }
    }
    if mode == Mode::Faithful {
        norm(&mut y);
    }
    y.iter().map(|v| v.clamp(0.0, 1.0)).collect()
}

fn check_file(file: &str, size: i64) {
    let npz = lsrf_dir().join(file);
    if !npz.is_file() {
        eprintln!("skipping: {} not found", npz.display());
        return;
    }
    let Some(faces) = real_crops() else {
        eprintln!("skipping: no cached crops and no REGGAN_TEST_IMAGE face");
        return;
    };
    let faces = reggan_trainer::measure::resize(&faces, size);
    for mode in [Mode::Faithful, Mode::Video] {
        let dir = temp_dir(&format!("{file}-{}", mode.name()));
        lsrf::import(&npz, "happy", mode, &dir, &faces, serde_json::json!(null)).unwrap();
        let mut model = ExpressionModel::load(&dir, Device::Cpu, 1).unwrap();
        assert_eq!(model.crop_size() as i64, size);
        assert_eq!(model.manifest().expressions, vec!["happy".to_string()]);
        let out = reggan_trainer::measure::run_model(&mut model, &faces, 0).unwrap();
        let mut worst = 0f64;
        let mut changed = 0f64;
        for i in 0..faces.size()[0] {
            let x = Vec::<f32>::try_from(&faces.get(i).flatten(0, -1)).unwrap();
            let y = Vec::<f32>::try_from(&out.get(i).flatten(0, -1)).unwrap();
            let r = formula(&npz, &x, mode);
            for ((a, b), x) in y.iter().zip(&r).zip(&x) {
                worst = worst.max((*a as f64 - b).abs());
                changed = changed.max((*a - x).abs() as f64);
            }
        }
        println!(
            "{file} {}: {} faces, max |ONNX - formula| = {worst:.2e}",
            mode.name(),
            faces.size()[0]
        );
        assert!(worst < 1e-4, "{file} {}: differs by {worst}", mode.name());
        assert!(changed > 0.05, "the model should change the face");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn lsrf_128_matches_the_formula_on_real_crops() {
    check_file("lsrf_weights_N2HAS_f-1_img-size_128.npz", 128);
}

#[test]
fn omp_80_matches_the_formula_on_real_crops() {
    check_file("omp_weights_N2HAS_f-5_img-size_80.npz", 80);
}

fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        zip.start_file(*name, zip::write::FileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn npy(descr: &str, shape: &str, data: Vec<u8>) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({shape}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = temp_dir("bad-npz");
    let out = dir.join("model");
    let faces = Tensor::rand([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
    let err = |path: &Path| {
        format!(
            "{:#}",
            lsrf::import(
                path,
                "happy",
                Mode::Video,
                &out,
                &faces,
                serde_json::json!(null)
            )
            .unwrap_err()
        )
    };

    let garbage = dir.join("garbage.npz");
    std::fs::write(&garbage, b"this is not a zip file").unwrap();
    let e = err(&garbage);
    assert!(e.contains("not an npz"), "{e}");

    let missing = dir.join("missing.npz");
    let e = err(&missing);
    assert!(e.contains("cannot open"), "{e}");

    // A valid CSR of the wrong shape: 10 x 11 (10 is not a square).
    let wrong = dir.join("wrong-shape.npz");
    let rows = 10;
    let indptr: Vec<i32> = (0..=rows).map(|i| i * 2).collect();
    let indices: Vec<i32> = (0..rows).flat_map(|i| [i, rows]).collect();
    let data: Vec<u8> = (0..2 * rows).flat_map(|_| 0.5f64.to_le_bytes()).collect();
    write_npz(
        &wrong,
        &[
            ("indices.npy", npy("<i4", "20,", i32s(&indices))),
            ("indptr.npy", npy("<i4", "11,", i32s(&indptr))),
            ("format.npy", npy("|S3", "", b"csr".to_vec())),
            ("shape.npy", npy("<i4", "2,", i32s(&[10, 11]))),
            ("data.npy", npy("<f8", "20,", data.clone())),
        ],
    );
    let e = err(&wrong);
    assert!(e.contains("(S², S²+1)"), "{e}");

    // Not CSR.
    let coo = dir.join("coo.npz");
    write_npz(
        &coo,
        &[
            ("indices.npy", npy("<i4", "20,", i32s(&indices))),
            ("indptr.npy", npy("<i4", "11,", i32s(&indptr))),
            ("format.npy", npy("|S3", "", b"coo".to_vec())),
            ("shape.npy", npy("<i4", "2,", i32s(&[10, 11]))),
            ("data.npy", npy("<f8", "20,", data.clone())),
        ],
    );
    let e = err(&coo);
    assert!(e.contains("expected csr"), "{e}");

    // Truncated array data.
    let short = dir.join("short.npz");
    write_npz(
        &short,
        &[
            ("indices.npy", npy("<i4", "20,", i32s(&indices))),
            ("indptr.npy", npy("<i4", "11,", i32s(&indptr))),
            ("format.npy", npy("|S3", "", b"csr".to_vec())),
            ("shape.npy", npy("<i4", "2,", i32s(&[10, 11]))),
            ("data.npy", npy("<f8", "20,", data[..40].to_vec())),
        ],
    );
    let e = err(&short);
    assert!(e.contains("truncated"), "{e}");

    // A real file cut short is not a readable zip.
    let real = lsrf_dir().join("lsrf_weights_N2HAS_f-1_img-size_128.npz");
    if let Ok(bytes) = std::fs::read(&real) {
        let cut = dir.join("cut.npz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = err(&cut);
        assert!(e.contains("npz"), "{e}");
    }

    // An unknown expression.
    if real.is_file() {
        let e = format!(
            "{:#}",
            lsrf::import(
                &real,
                "sleepy",
                Mode::Video,
                &out,
                &faces,
                serde_json::json!(null)
            )
            .unwrap_err()
        );
        assert!(e.contains("unknown expression"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
