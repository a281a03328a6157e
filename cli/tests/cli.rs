//! End-to-end tests of the `reggan` binary on the public-domain astronaut photo.
//!
//! They need the model (`$REGGAN_MODEL`, else the shipped `models/mr`) and the photo
//! (`$REGGAN_TEST_IMAGE`, else `.deps/astronaut.png` from `scripts/setup.sh`); without
//! them a test prints why and passes without checking anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::{reggan, run_pipeline, scratch};
use gst::prelude::*;
use reggan::{DetectorKind, FaceDetector, RgbImage, EXPRESSIONS};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the repository")
}

fn model_dir() -> PathBuf {
    std::env::var_os("REGGAN_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/mr"))
}

fn photo() -> PathBuf {
    std::env::var_os("REGGAN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".deps/astronaut.png"))
}

/// Says why a test checks nothing. Written to the real stderr, which libtest does not
/// capture, so the reason shows in a normal `cargo test` run.
fn skip(test: &str, why: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// What a test of `reggan apply` on the photo works with.
struct Fixture {
    model: PathBuf,
    photo: PathBuf,
    /// A fresh, empty directory of the test's own.
    dir: PathBuf,
}

/// The model, the photo and a scratch directory named after `test`, or `None` after
/// saying which of model and photo is missing.
fn fixtures(test: &str) -> Option<Fixture> {
    let (model, photo) = (model_dir(), photo());
    if !model.join("model.json").is_file() {
        skip(
            test,
            format!(
                "no model at {} (train it or set REGGAN_MODEL)",
                model.display()
            ),
        );
        return None;
    }
    if !photo.is_file() {
        skip(
            test,
            format!(
                "no test photo at {} (run scripts/setup.sh)",
                photo.display()
            ),
        );
        return None;
    }
    Some(Fixture {
        model,
        photo,
        dir: scratch(test),
    })
}

/// `reggan apply INPUT EXTRA... --model MODEL -o OUT`.
fn apply(input: &Path, extra: &[&str], model: &Path, out: &Path) -> Output {
    let mut args = vec!["apply", path_str(input)];
    args.extend_from_slice(extra);
    args.extend(["--model", path_str(model), "-o", path_str(out)]);
    reggan(&args)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Mean absolute difference over a rectangle of two same-sized images.
fn mean_diff(a: &RgbImage, b: &RgbImage, x0: usize, y0: usize, w: usize, h: usize) -> f64 {
    let mut sum = 0u64;
    for y in y0..(y0 + h).min(a.height) {
        for x in x0..(x0 + w).min(a.width) {
            let (p, q) = (a.pixel(x, y), b.pixel(x, y));
            sum += (0..3).map(|c| p[c].abs_diff(q[c]) as u64).sum::<u64>();
        }
    }
    sum as f64 / (w * h * 3) as f64
}

/// `--max-yaw 0` leaves every face alone (the fade has reached zero) and says so;
/// `--detail` and `--keep-colour` are accepted and change the result.
#[test]
fn compositing_options_reach_the_processor() {
    let Some(fx) = fixtures("compositing_options_reach_the_processor") else {
        return;
    };
    let photo = &fx.photo;
    let run_with = |name: &str, extra: &[&str]| {
        let out = fx.dir.join(name);
        let run = apply(photo, extra, &fx.model, &out);
        assert!(run.status.success(), "{extra:?}: {}", stderr(&run));
        (
            String::from_utf8_lossy(&run.stdout).into_owned(),
            RgbImage::load(&out).unwrap(),
        )
    };
    let (said, turned) = run_with("turned.png", &["--max-yaw", "0"]);
    assert!(said.contains("turned past --max-yaw"), "stdout: {said}");
    let before = RgbImage::load(photo).unwrap();
    assert_eq!(turned, before, "a face past --max-yaw was changed");
    let (_, default) = run_with("default.png", &[]);
    let (_, plain) = run_with("plain.png", &["--detail", "off", "--keep-colour", "false"]);
    assert_ne!(default, before);
    assert_ne!(default, plain);
    let bad = reggan(&["apply", path_str(photo), "-o", "x.png", "--max-yaw", "120"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("outside 0..90"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn apply_changes_the_face_and_nothing_far_from_it() {
    let Some(fx) = fixtures("apply_changes_the_face_and_nothing_far_from_it") else {
        return;
    };
    let out = fx.dir.join("happy.png");
    let run = apply(&fx.photo, &["-e", "happy"], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("1 face"),
        "stdout: {}",
        String::from_utf8_lossy(&run.stdout)
    );

    let before = RgbImage::load(&fx.photo).unwrap();
    let after = RgbImage::load(&out).unwrap();
    assert_eq!((before.width, before.height), (after.width, after.height));

    let mut copy = before.clone();
    let faces = FaceDetector::new(DetectorKind::Auto)
        .unwrap()
        .detect(&copy.as_frame(), 32.0)
        .unwrap();
    let face = faces.first().expect("the photo has a face").bbox;
    let inside = mean_diff(
        &before,
        &after,
        face.x as usize,
        face.y as usize,
        face.w as usize,
        face.h as usize,
    );
    assert!(
        inside > 0.5,
        "face region barely changed (mean abs diff {inside:.3})"
    );

    let (w, h, c) = (before.width, before.height, 32);
    for (x0, y0) in [(0, 0), (w - c, 0), (0, h - c), (w - c, h - c)] {
        assert_eq!(
            mean_diff(&before, &after, x0, y0, c, c),
            0.0,
            "corner at ({x0},{y0}) changed"
        );
    }
}

#[test]
fn side_by_side_puts_before_left_of_after() {
    let Some(fx) = fixtures("side_by_side_puts_before_left_of_after") else {
        return;
    };
    let out = fx.dir.join("sbs.png");
    let run = apply(&fx.photo, &["--side-by-side"], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    let before = RgbImage::load(&fx.photo).unwrap();
    let strip = RgbImage::load(&out).unwrap();
    assert_eq!(
        (strip.width, strip.height),
        (2 * before.width, before.height)
    );
    assert_eq!(strip.pixel(10, 10), before.pixel(10, 10));
    assert_eq!(strip.pixel(before.width + 10, 10), before.pixel(10, 10));
}

/// Reads an image file as it is (channels, depth, alpha).
fn read_unchanged(path: &Path) -> opencv::core::Mat {
    let m = opencv::imgcodecs::imread(path_str(path), opencv::imgcodecs::IMREAD_UNCHANGED).unwrap();
    assert!(
        !opencv::prelude::MatTraitConst::empty(&m),
        "{} unreadable",
        path.display()
    );
    m
}

fn write_image(path: &Path, image: &opencv::core::Mat) {
    assert!(
        opencv::imgcodecs::imwrite(path_str(path), image, &opencv::core::Vector::new()).unwrap()
    );
}

/// A photo with alpha keeps it, a grey one stays grey, a 16-bit one keeps its 16 bits
/// wherever the edit did not reach (and gets the edit's change, scaled, where it did),
/// and a photo with no face is copied byte for byte. Each against `apply` on the plain
/// 8-bit colour photo.
#[test]
fn apply_keeps_alpha_grey_and_16_bits_and_copies_a_photo_it_did_not_change() {
    use opencv::core::{Mat, Vec3b, Vec3w, Vec4b, Vector};
    use opencv::prelude::*;
    let Some(fx) = fixtures("apply_keeps_alpha_grey_and_16_bits") else {
        return;
    };
    let plain = fx.dir.join("plain.png");
    let bgr = read_unchanged(&fx.photo);
    let bgr = if bgr.channels() == 3 {
        bgr
    } else {
        let mut c = Mat::default();
        opencv::imgproc::cvt_color_def(&bgr, &mut c, opencv::imgproc::COLOR_BGRA2BGR).unwrap();
        c
    };
    write_image(&plain, &bgr);
    let edited_plain = fx.dir.join("plain-happy.png");
    assert!(apply(&plain, &[], &fx.model, &edited_plain)
        .status
        .success());
    let edited = read_unchanged(&edited_plain);
    let (w, h) = (bgr.cols(), bgr.rows());

    // Alpha: a gradient, kept exactly; the colour is the plain photo's edit.
    let mut planes = Vector::<Mat>::new();
    opencv::core::split(&bgr, &mut planes).unwrap();
    let alpha = Mat::from_slice_2d(
        &(0..h)
            .map(|y| (0..w).map(|x| ((x + y) % 256) as u8).collect::<Vec<u8>>())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    planes.push(alpha);
    let mut bgra = Mat::default();
    opencv::core::merge(&planes, &mut bgra).unwrap();
    let (input, out) = (fx.dir.join("alpha.png"), fx.dir.join("alpha-happy.png"));
    write_image(&input, &bgra);
    let run = apply(&input, &[], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    let result = read_unchanged(&out);
    assert_eq!(result.channels(), 4, "the alpha channel is kept");
    for y in 0..h {
        for x in 0..w {
            let (p, e) = (
                result.at_2d::<Vec4b>(y, x).unwrap(),
                edited.at_2d::<Vec3b>(y, x).unwrap(),
            );
            assert_eq!(p[3], ((x + y) % 256) as u8, "alpha at ({x},{y})");
            assert_eq!(
                [p[0], p[1], p[2]],
                [e[0], e[1], e[2]],
                "colour at ({x},{y})"
            );
        }
    }

    // 16 bits: low bits under half an 8-bit step, so the processor sees the same photo.
    let low = |x: i32, y: i32, v: u8| {
        if v == 255 {
            0
        } else {
            ((7 * x + 3 * y) % 129) as u16
        }
    };
    let mut deep = Mat::new_rows_cols_with_default(h, w, opencv::core::CV_16UC3, 0.into()).unwrap();
    for y in 0..h {
        for x in 0..w {
            let p = bgr.at_2d::<Vec3b>(y, x).unwrap();
            *deep.at_2d_mut::<Vec3w>(y, x).unwrap() =
                Vec3w::from(p.0.map(|v| v as u16 * 257 + low(x, y, v)));
        }
    }
    let (input, out) = (fx.dir.join("deep.png"), fx.dir.join("deep-happy.png"));
    write_image(&input, &deep);
    assert!(apply(&input, &[], &fx.model, &out).status.success());
    let result = read_unchanged(&out);
    assert_eq!(result.depth(), opencv::core::CV_16U, "16 bits are kept");
    let mut changed = 0;
    for y in 0..h {
        for x in 0..w {
            let (r, d) = (
                result.at_2d::<Vec3w>(y, x).unwrap(),
                deep.at_2d::<Vec3w>(y, x).unwrap(),
            );
            let (e, b) = (
                edited.at_2d::<Vec3b>(y, x).unwrap(),
                bgr.at_2d::<Vec3b>(y, x).unwrap(),
            );
            for c in 0..3 {
                let want = (d[c] as i32 + 257 * (e[c] as i32 - b[c] as i32)).clamp(0, 65535);
                assert_eq!(r[c] as i32, want, "channel {c} at ({x},{y})");
                changed += (e[c] != b[c]) as usize;
            }
        }
    }
    assert!(changed > 1000, "the edit reached only {changed} values");

    // Grey stays one channel: the luma of the colour photo's edit.
    let mut grey = Mat::default();
    opencv::imgproc::cvt_color_def(&bgr, &mut grey, opencv::imgproc::COLOR_BGR2GRAY).unwrap();
    let (input, out) = (fx.dir.join("grey.png"), fx.dir.join("grey-happy.png"));
    write_image(&input, &grey);
    assert!(apply(&input, &[], &fx.model, &out).status.success());
    let result = read_unchanged(&out);
    assert_eq!(result.channels(), 1, "a grey photo stays grey");
    let mut diff = Mat::default();
    opencv::core::absdiff(&result, &grey, &mut diff).unwrap();
    let changed = opencv::core::count_non_zero(&diff).unwrap();
    assert!(
        changed > 1000,
        "the grey face changed in {changed} pixels only"
    );
    assert_eq!(
        *result.at_2d::<u8>(5, 5).unwrap(),
        *grey.at_2d::<u8>(5, 5).unwrap()
    );

    // No face: the very bytes (a JPEG is not encoded a second time).
    let blank =
        Mat::new_rows_cols_with_default(120, 160, opencv::core::CV_8UC3, 90.into()).unwrap();
    let (input, out) = (fx.dir.join("blank.jpg"), fx.dir.join("blank-happy.jpg"));
    write_image(&input, &blank);
    let run = apply(&input, &[], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    assert!(String::from_utf8_lossy(&run.stdout).contains("unchanged"));
    assert_eq!(std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
}

#[test]
fn refuses_to_overwrite_the_input() {
    let Some(fx) = fixtures("refuses_to_overwrite_the_input") else {
        return;
    };
    let input = fx.dir.join("in.png");
    std::fs::copy(&fx.photo, &input).unwrap();
    let original = std::fs::read(&input).unwrap();
    // The same file under another spelling, with --force: still refused.
    let other_spelling = fx.dir.join(".").join("in.png");
    for target in [&input, &other_spelling] {
        let run = apply(&input, &["--force"], &fx.model, target);
        assert!(!run.status.success(), "overwriting the input must fail");
        assert!(
            stderr(&run).contains("overwrite"),
            "stderr: {}",
            stderr(&run)
        );
        assert_eq!(
            std::fs::read(&input).unwrap(),
            original,
            "input file changed"
        );
    }
}

#[test]
fn refuses_an_existing_output_without_force() {
    let Some(fx) = fixtures("refuses_an_existing_output_without_force") else {
        return;
    };
    let out = fx.dir.join("out.png");
    std::fs::write(&out, b"keep me").unwrap();
    let run = apply(&fx.photo, &[], &fx.model, &out);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("--force"), "stderr: {}", stderr(&run));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    let run = apply(&fx.photo, &["--force"], &fx.model, &out);
    assert!(run.status.success(), "with --force: {}", stderr(&run));
    assert!(RgbImage::load(&out).is_ok());
}

#[test]
fn unknown_expression_lists_the_available_ones() {
    let Some(fx) = fixtures("unknown_expression_lists_the_available_ones") else {
        return;
    };
    let out = fx.dir.join("o.png");
    let run = apply(&fx.photo, &["-e", "joyful"], &fx.model, &out);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("joyful"), "stderr: {err}");
    for name in EXPRESSIONS {
        assert!(err.contains(name), "'{name}' missing from: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn missing_model_is_named() {
    let photo = photo();
    if !photo.is_file() {
        skip(
            "missing_model_is_named",
            format!("no test photo at {}", photo.display()),
        );
        return;
    }
    let dir = scratch("missing_model_is_named");
    let missing = dir.join("no-such-model");
    let run = apply(&photo, &[], &missing, &dir.join("o.png"));
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains(path_str(&missing)),
        "stderr: {}",
        stderr(&run)
    );
}

#[test]
fn unreadable_input_is_named() {
    let Some(fx) = fixtures("unreadable_input_is_named") else {
        return;
    };
    let junk = fx.dir.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    for input in [junk, fx.dir.join("absent.png")] {
        let run = apply(&input, &[], &fx.model, &fx.dir.join("o.png"));
        assert!(!run.status.success());
        assert!(
            stderr(&run).contains(input.file_name().unwrap().to_str().unwrap()),
            "stderr: {}",
            stderr(&run)
        );
    }
}

/// `frames` frames of the astronaut as H.264 in MP4.
fn make_video(photo: &Path, path: &Path, frames: u32) {
    encode_photo(
        photo,
        frames,
        "videoconvert ! video/x-raw,format=I420 ! x264enc ! mp4mux",
        path,
    );
}

/// `frames` frames of `photo` at 25 fps through `encode` (the elements from raw video
/// to a muxed stream) into `path`.
fn encode_photo(photo: &Path, frames: u32, encode: &str, path: &Path) {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! pngdec ! imagefreeze num-buffers={frames} ! video/x-raw,framerate=25/1 \
         ! {encode} ! filesink location=\"{}\"",
        photo.display(),
        path.display()
    ))
    .unwrap();
    run_pipeline(&pipeline);
}

/// Decodes a video and returns (frames, width, height).
fn decode(path: &Path) -> (u64, i32, i32) {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! fakesink name=sink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let pad = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    let seen = Arc::new(Mutex::new((0u64, 0i32, 0i32)));
    let record = seen.clone();
    // Caps are read while frames flow: the pad forgets them when the pipeline stops.
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        let mut seen = record.lock().unwrap();
        seen.0 += 1;
        if let Some(s) = pad
            .current_caps()
            .as_ref()
            .and_then(|c| c.structure(0).map(|s| s.to_owned()))
        {
            seen.1 = s.get("width").unwrap();
            seen.2 = s.get("height").unwrap();
        }
        gst::PadProbeReturn::Ok
    });
    run_pipeline(pipeline.upcast_ref());
    let seen = *seen.lock().unwrap();
    seen
}

/// A video with odd sides (VP8 takes them, H.264 in 4:2:0 does not) comes out with one
/// black column and row added, every frame, and says so.
#[test]
fn a_video_with_odd_sides_is_padded_to_even_ones() {
    let Some(fx) = fixtures("a_video_with_odd_sides_is_padded_to_even_ones") else {
        return;
    };
    gst::init().unwrap();
    let input = fx.dir.join("odd.webm");
    encode_photo(
        &fx.photo,
        6,
        "videoconvert ! videoscale ! video/x-raw,width=511,height=301 ! vp8enc ! webmmux",
        &input,
    );
    let out = fx.dir.join("odd.mp4");
    let run = apply(&input, &[], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        said.contains("padded with black to 512x302"),
        "stdout: {said}"
    );
    assert_eq!(decode(&out), (6, 512, 302));
}

/// Gives an MP4's first track a display rotation of 90 degrees clockwise: the matrix
/// of its track header (`tkhd`, version 0), as phones write it for portrait video.
fn rotate_display_90(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"tkhd")
        .expect("an MP4 track header");
    assert_eq!(bytes[at + 4], 0, "tkhd version 0");
    // 'tkhd', version and flags, five 32-bit fields, 8 reserved, layer, group, volume, 2.
    let matrix = at + 4 + 4 + 20 + 8 + 8;
    let rotate: [i32; 9] = [0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30];
    for (k, v) in rotate.iter().enumerate() {
        bytes[matrix + 4 * k..matrix + 4 * k + 4].copy_from_slice(&v.to_be_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The first frame of a video as RGB.
fn first_frame(video: &Path, png: &Path) -> RgbImage {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=RGB \
         ! pngenc snapshot=true ! filesink location=\"{}\"",
        video.display(),
        png.display()
    ))
    .unwrap();
    run_pipeline(&pipeline);
    RgbImage::load(png).unwrap()
}

/// A phone video stored sideways with a display rotation comes out upright, the way
/// players show the input: the muxer cannot write the rotation back, and the detector
/// wants upright faces.
#[test]
fn a_video_stored_sideways_with_a_rotation_comes_out_upright() {
    let Some(fx) = fixtures("a_video_stored_sideways_with_a_rotation_comes_out_upright") else {
        return;
    };
    gst::init().unwrap();
    // The photo as a 512x384 landscape frame, stored turned 90 degrees left (384x512).
    let input = fx.dir.join("sideways.mp4");
    encode_photo(
        &fx.photo,
        6,
        "videoconvert ! videoscale ! video/x-raw,width=512,height=384 ! videoflip video-direction=90l \
         ! videoconvert ! video/x-raw,format=I420 ! x264enc ! mp4mux",
        &input,
    );
    assert_eq!(decode(&input).1, 384, "stored sideways");
    rotate_display_90(&input);

    let out = fx.dir.join("upright.mp4");
    let run = apply(&input, &["-e", "surprised"], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    assert_eq!(decode(&out), (6, 512, 384));
    let upright = images_resized(&RgbImage::load(&fx.photo).unwrap(), 512, 384);
    let frame = first_frame(&out, &fx.dir.join("frame.png"));
    // Away from the face the frame is the upright photo, up to two H.264 encodings.
    let corner = mean_diff(&frame, &upright, 0, 0, 96, 96);
    assert!(
        corner < 8.0,
        "the output's corner is {corner:.1} grey levels off the upright photo"
    );
}

/// `image` scaled to `w` x `h` (OpenCV, area).
fn images_resized(image: &RgbImage, w: usize, h: usize) -> RgbImage {
    use opencv::prelude::*;
    let mut copy = image.clone();
    let mut out = opencv::core::Mat::default();
    opencv::imgproc::resize(
        &copy.as_frame().as_mat().unwrap(),
        &mut out,
        opencv::core::Size::new(w as i32, h as i32),
        0.0,
        0.0,
        opencv::imgproc::INTER_AREA,
    )
    .unwrap();
    RgbImage {
        width: w,
        height: h,
        data: out.data_bytes().unwrap().to_vec(),
    }
}

#[test]
fn video_keeps_every_frame_and_the_size() {
    let Some(fx) = fixtures("video_keeps_every_frame_and_the_size") else {
        return;
    };
    gst::init().unwrap();
    let input = fx.dir.join("in.mp4");
    let out = fx.dir.join("out.mp4");
    make_video(&fx.photo, &input, 10);
    let run = apply(&input, &["-e", "surprised"], &fx.model, &out);
    assert!(run.status.success(), "apply failed: {}", stderr(&run));
    assert!(String::from_utf8_lossy(&run.stdout).contains("10 frames"));
    assert_eq!(decode(&out), (10, 512, 512));

    let sbs = fx.dir.join("sbs.mp4");
    let run = apply(&input, &["--side-by-side"], &fx.model, &sbs);
    assert!(
        run.status.success(),
        "side-by-side failed: {}",
        stderr(&run)
    );
    assert_eq!(decode(&sbs), (10, 1024, 512));
}

#[test]
fn bench_writes_every_stage() {
    let Some(Fixture { model, photo, dir }) = fixtures("bench_writes_every_stage") else {
        return;
    };
    let json = dir.join("bench.json");
    let run = reggan(&[
        "bench",
        "--frames",
        "3",
        "--image",
        path_str(&photo),
        "--model",
        path_str(&model),
        "--json",
        path_str(&json),
    ]);
    assert!(run.status.success(), "bench failed: {}", stderr(&run));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = value["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "640x480, 1280x720, 1920x1080");
    for row in results {
        for stage in ["detect", "align", "model", "composite", "total"] {
            assert!(row["core"]["stages"][stage]["mean_ms"].as_f64().unwrap() >= 0.0);
        }
        assert!(row["core"]["fps"].as_f64().unwrap() > 0.0);
        // Every timed frame falls in one detect path: the shares add up to 1.
        let paths = row["core"]["detect_by_path"].as_object().unwrap();
        let known = [
            "flow_only",
            "looks",
            "front_pass",
            "back_pass",
            "both_passes",
        ];
        assert!(
            paths.keys().all(|k| known.contains(&k.as_str())),
            "{paths:?}"
        );
        let share: f64 = paths.values().map(|p| p["share"].as_f64().unwrap()).sum();
        assert!(
            (share - 1.0).abs() < 0.02,
            "shares add up to {share}: {paths:?}"
        );
        assert!(paths
            .values()
            .all(|p| p["mean_ms"].as_f64().unwrap() >= 0.0));
        let element = &row["element"];
        assert!(element["fps"].as_f64().unwrap() > 0.0);
        let interval = &element["interval"];
        assert!(
            interval["p95_ms"].as_f64().unwrap() >= interval["mean_ms"].as_f64().unwrap() * 0.5
        );
    }
    // Four faces: the bench fails unless the processor finds all four in every size.
    let run = reggan(&[
        "bench",
        "--frames",
        "2",
        "--faces",
        "4",
        "--core-only",
        "--image",
        path_str(&photo),
        "--model",
        path_str(&model),
    ]);
    assert!(
        run.status.success(),
        "bench --faces 4 failed: {}",
        stderr(&run)
    );
    let run = reggan(&["bench", "--faces", "3", "--model", path_str(&model)]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("1 or 4"), "{}", stderr(&run));
    // The element fed I420, as a decoder would: it finds the face and runs in each size.
    let bench = |args: &[&str]| {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        all.extend(["--image", path_str(&photo), "--model", path_str(&model)]);
        all.extend(["--json", path_str(&json)]);
        let run = reggan(&all);
        assert!(run.status.success(), "{all:?} failed: {}", stderr(&run));
        let text = std::fs::read_to_string(&json).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let value = bench(&["--frames", "2", "--format", "i420"]);
    assert_eq!(value["element_format"], "i420");
    for row in value["results"].as_array().unwrap() {
        assert!(row["element"]["fps"].as_f64().unwrap() > 0.0, "{row}");
    }
    let run = reggan(&["bench", "--format", "yuy2", "--model", path_str(&model)]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("i420"), "{}", stderr(&run));
    // A still picture waits for its whole-frame searches; with something moving in the
    // frame's border every due one runs (two in every five frames).
    let share = |scene: &str| {
        let value = bench(&["--frames", "12", "--core-only", "--scene", scene]);
        assert_eq!(value["scene"], scene);
        value["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["core"]["whole_frame_search_share"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let (still, moving) = (share("still"), share("moving"));
    assert!(still.iter().all(|&s| s == 0.0), "{still:?}");
    assert!(moving.iter().all(|&s| s >= 0.3), "{moving:?}");
}

/// The element's face-following options are `apply` options too, checked like them.
#[test]
fn tracking_options_are_checked_before_any_work() {
    for (args, needle) in [
        (["--detect-interval", "0"], "detect-interval"),
        (["--transition-ms", "20000"], "transition-ms"),
        (["--tracking", "maybe"], "tracking"),
    ] {
        let out = reggan(&[
            "apply",
            "in.mp4",
            "-o",
            "/tmp/never-written.mp4",
            args[0],
            args[1],
        ]);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!Path::new("/tmp/never-written.mp4").exists());
    }
}
