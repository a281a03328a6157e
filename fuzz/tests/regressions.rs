// SPDX-License-Identifier: MIT OR Apache-2.0
//! Every input the fuzzers once crashed on (`fuzz/regressions/TARGET/`) runs through its
//! target again without a panic, with the outcome the fix gave it.

use std::path::Path;

fn replay(target: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    files
        .iter()
        .map(|f| {
            let data = std::fs::read(f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            (name, reggan_fuzz::run(target, &data))
        })
        .collect()
}

/// Valid ONNX graphs whose `face_out` or `flow` holds only the batch's first face: they
/// passed the loader's one-face probe and then panicked the compositor on a frame with
/// two faces. The loader now refuses them, naming the output and the batch.
#[test]
fn models_that_ignore_the_batch_are_refused_at_load() {
    if !reggan::model::onnxruntime_path().is_file() {
        eprintln!("SKIPPED: ONNX Runtime missing (run scripts/setup.sh)");
        return;
    }
    for (name, label) in replay("model_dir") {
        let output = name.trim_start_matches("first-of-batch-");
        assert!(
            label.starts_with("load:")
                && label.contains(&format!("{output} has shape"))
                && label.contains("for a batch of"),
            "{name}: {label}"
        );
    }
}

/// model.json files that made the loader allocate without bound (crop_size 60000: the
/// process grew to 21 GB before the kernel killed it) or align faces to an infinite
/// point. Both are refused when the manifest is parsed.
#[test]
fn manifests_with_huge_sizes_or_infinite_points_are_refused() {
    for (name, label) in replay("manifest") {
        assert!(label.starts_with("parse:"), "{name}: {label}");
        let why = if name.starts_with("huge") {
            "crop_size"
        } else {
            "not a finite number"
        };
        assert!(label.contains(why), "{name}: {label}");
    }
}
