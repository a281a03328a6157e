// SPDX-License-Identifier: MIT OR Apache-2.0
//! The built plugin (`libgstreggan.so`) in a real `gst-launch-1.0` pipeline, the way
//! users run it: PNG in, `faceexpression expression=sad`, PNG out.

mod common;

use std::process::Command;

use common::*;
use reggan::RgbImage;

#[test]
fn gst_launch_png_pipeline_changes_the_face() {
    let (Some(model), Some(input), Some(launch), Some(plugins)) = (
        shipped_model(),
        astronaut_path(),
        gst_launch(),
        plugin_dir(),
    ) else {
        return;
    };
    let out = std::env::temp_dir().join(format!(
        "faceexpression-gst-launch-{}.png",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&out);
    let registry = std::env::temp_dir().join(format!(
        "faceexpression-registry-{}.bin",
        std::process::id()
    ));
    let pipeline = format!(
        "filesrc location={} ! pngdec ! videoconvert ! video/x-raw,format=RGB ! \
         faceexpression model={} expression=sad ! videoconvert ! pngenc ! filesink location={}",
        input.display(),
        model.display(),
        out.display()
    );
    let result = Command::new(launch)
        .arg("-q")
        .args(pipeline.split_whitespace())
        .env("GST_PLUGIN_PATH", &plugins)
        // A private registry, so a stale system cache cannot hide the fresh build.
        .env("GST_REGISTRY", &registry)
        .output()
        .expect("gst-launch-1.0 runs");
    let _ = std::fs::remove_file(&registry);
    assert!(
        result.status.success(),
        "gst-launch-1.0 {pipeline} failed ({}):\n{}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(out.is_file(), "{} not written", out.display());
    let a = RgbImage::load(&input).unwrap();
    let b = RgbImage::load(&out).unwrap();
    assert_eq!((a.width, a.height), (b.width, b.height));
    let changed: Vec<(usize, usize)> = (0..a.height)
        .flat_map(|y| (0..a.width).map(move |x| (x, y)))
        .filter(|&(x, y)| a.pixel(x, y) != b.pixel(x, y))
        .collect();
    assert!(changed.len() >= 50, "only {} pixels changed", changed.len());
    // Everything that changed is in the face area (x 120-300, y 20-200 of the photo).
    let stray: Vec<_> = changed
        .iter()
        .filter(|&&(x, y)| !(100..320).contains(&x) || !(0..220).contains(&y))
        .take(5)
        .collect();
    assert!(
        stray.is_empty(),
        "pixels changed far from the face: {stray:?}"
    );
    std::fs::remove_file(&out).unwrap();
}
