//! Crop files in pure Rust, the sharpness filter for unpaired faces, and `pack`.

use std::path::PathBuf;

use reggan_trainer::data::{
    crop_sharpness, load_crop, pack_cache, save_png, save_rgb, to_rgb_image, Entry, Index,
    UNLABELLED,
};
use tch::{Device, Kind, Tensor};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reggan-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn png_round_trips_exactly_and_jpeg_closely() {
    let dir = temp_dir("roundtrip");
    // A smooth picture (JPEG's home ground) quantised to 8 bits.
    let ramp = Tensor::linspace(0.0, 1.0, 64, (Kind::Float, Device::Cpu));
    let img = Tensor::stack(
        &[
            ramp.view([1, 64]).repeat([48, 1]),
            ramp.view([64, 1]).narrow(0, 0, 48).repeat([1, 64]),
            Tensor::full([48, 64], 0.5, (Kind::Float, Device::Cpu)),
        ],
        0,
    );
    let img = (img * 255.0).round() / 255.0;
    save_png(&img, &dir.join("a.png")).unwrap();
    let back = load_crop(&dir.join("a.png")).unwrap();
    assert_eq!(back.size(), vec![3, 48, 64], "layout [3,H,W]");
    assert!(max_abs(&back, &img) < 1e-6, "PNG is lossless");
    save_png(&img, &dir.join("a.jpg")).unwrap();
    let jpeg = load_crop(&dir.join("a.jpg")).unwrap();
    let mean_err = (&jpeg - &img).abs().mean(Kind::Float).double_value(&[]);
    assert!(
        mean_err < 4.0 / 255.0,
        "JPEG at quality 95: mean error {mean_err}"
    );
    let err = load_crop(&dir.join("missing.png")).unwrap_err();
    assert!(format!("{err:#}").contains("missing.png"), "{err:#}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sharpness_is_the_laplacian_variance() {
    // Checkerboard of 0 and 255: every interior Laplacian is ±4·255, mean ~0.
    let (w, h) = (16usize, 12usize);
    let data: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let v = if (i % w + i / w) % 2 == 0 { 0 } else { 255 };
            [v, v, v]
        })
        .collect();
    let board = reggan::RgbImage {
        width: w,
        height: h,
        data,
    };
    let s = crop_sharpness(&board);
    let want = (4.0 * 255.0f64).powi(2);
    assert!((s - want).abs() / want < 0.01, "{s} vs {want}");
    let flat = reggan::RgbImage {
        width: w,
        height: h,
        data: vec![90; w * h * 3],
    };
    assert_eq!(crop_sharpness(&flat), 0.0);
}

#[test]
fn pack_keeps_paired_crops_and_only_the_sharpest_unpaired_ones() {
    let cache = temp_dir("pack-src");
    let out = temp_dir("pack-out");
    let noise = |amp: f64, seed: i64| {
        tch::manual_seed(seed);
        (Tensor::rand([3, 32, 32], (Kind::Float, Device::Cpu)) * amp + 0.5 - amp / 2.0)
            .clamp(0.0, 1.0)
    };
    // Two paired crops (smooth), three unpaired of rising sharpness.
    let crops = [
        ("tfeid/a", "neutral", noise(0.0, 1)),
        ("tfeid/a", "happy", noise(0.0, 2)),
        ("utk/x", UNLABELLED, noise(0.2, 3)),
        ("utk/y", UNLABELLED, noise(0.9, 4)),
        ("utk/z", UNLABELLED, noise(0.5, 5)),
    ];
    let mut entries = Vec::new();
    for (i, (subject, expression, t)) in crops.iter().enumerate() {
        let rel = format!("crops/{subject}/{i}.png");
        std::fs::create_dir_all(cache.join(&rel).parent().unwrap()).unwrap();
        save_png(t, &cache.join(&rel)).unwrap();
        entries.push(Entry {
            dataset: subject.split('/').next().unwrap().into(),
            subject: subject.to_string(),
            expression: expression.to_string(),
            path: rel,
            source: String::new(),
        });
    }
    Index {
        crop_size: 32,
        template: reggan::Template::lsrf(32),
        entries,
        train_subjects: vec!["tfeid/a".into()],
        val_subjects: vec![],
        skipped: vec![],
    }
    .write(&cache)
    .unwrap();
    let dst = out.join("packed");
    assert_eq!(pack_cache(&cache, &dst, 90, Some(1)).unwrap(), 3);
    let index = Index::read(&dst).unwrap();
    let kept: Vec<&str> = index.entries.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        kept.iter().filter(|s| **s == "tfeid/a").count(),
        2,
        "{kept:?}"
    );
    assert!(
        kept.contains(&"utk/y"),
        "the sharpest unpaired crop is kept: {kept:?}"
    );
    for e in &index.entries {
        assert!(
            e.path.ends_with(".jpg") && !e.path[6..].contains('/'),
            "{}",
            e.path
        );
        let back = to_rgb_image(&load_crop(&dst.join(&e.path)).unwrap()).unwrap();
        assert_eq!((back.width, back.height), (32, 32));
    }
    let err = save_rgb(4, 4, vec![0; 10], &out.join("bad.png"), 90).unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    std::fs::remove_dir_all(&cache).ok();
    std::fs::remove_dir_all(&out).ok();
}
