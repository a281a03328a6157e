//! Compositing that keeps the person (issue 9): detail, colour, no seam at the mask's
//! rim, and turned heads. The "models" here are functions of the crop (a blur, an iris
//! recolouring, a tone shift), given straight to the compositor, and the checks are on
//! the frame it writes, against expectations computed here.

mod common;

use common::laplacian_variance;
use opencv::core::{Mat, Size};
use opencv::prelude::*;
use reggan::align::{apply, crop_to_planar, Alignment, Template};
use reggan::composite::{face_mask, mouth_region, CompositeOptions, Compositor, Detail};
use reggan::detect::{BoxF, Face, Point};
use reggan::pose::{yaw_strength, HeadPose, TEMPLATE_MM};
use reggan::{
    DetectorKind, Device, ExpressionModel, FaceDetector, FrameProcessor, ProcessorConfig, RgbImage,
};

const S: usize = 128;

/// A face whose crop -> frame map is `scale * rotation(degrees)`, with the crop centre
/// at `centre` in the frame (a crop of S pixels).
fn similarity(scale: f64, degrees: f64, centre: (f64, f64)) -> Alignment {
    common::similarity(S, scale, degrees, centre)
}

/// The crop scale of a face `px` frame pixels wide: a face is about 2.4 eye distances
/// wide, and the template's eyes are 52 of the crop's 128 pixels apart.
fn scale_for_face(px: f64) -> f64 {
    px / 2.4 / 52.0
}

/// A photo-like frame: smooth shading, hard edges (a dark "hair" band, a bright patch,
/// thin dark lines like lashes) and fine noise like skin texture, deterministic.
fn detailed(w: usize, h: usize) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    let mut seed = 0x2545_f491_u32;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed % 25) as f64 - 12.0
    };
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            let mut v = 150.0 + 30.0 * (fx / 23.0).sin() * (fy / 31.0).cos();
            if (fy / 40.0).floor() as i64 % 3 == 0 {
                v -= 70.0; // bands with hard edges
            }
            if (x / 9) % 7 == 0 {
                v -= 45.0; // thin dark lines
            }
            let n = noise();
            let px = [v + 25.0 + n, v + n, v - 20.0 + n];
            let i = (y * w + x) * 3;
            for (out, v) in img.data[i..i + 3].iter_mut().zip(px) {
                *out = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    img
}

fn planar_crop(img: &mut RgbImage, a: &Alignment) -> Vec<f32> {
    let frame = img.as_frame();
    let mut crop = vec![0.0; 3 * a.size * a.size];
    crop_to_planar(&a.warp_crop(&frame).unwrap(), frame.layout(), &mut crop).unwrap();
    crop
}

/// Gaussian blur of each plane of a planar crop (edges replicated), sigma in crop px.
fn blurred(crop: &[f32], sigma: f64) -> Vec<f32> {
    let n = S * S;
    let mut out = vec![0.0; crop.len()];
    for (src, dst) in crop.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let src = Mat::new_rows_cols_with_data(S as i32, S as i32, src).unwrap();
        let mut m = Mat::default();
        opencv::imgproc::gaussian_blur(
            &src,
            &mut m,
            Size::new(0, 0),
            sigma,
            sigma,
            opencv::core::BORDER_REPLICATE,
        )
        .unwrap();
        dst.copy_from_slice(m.data_typed::<f32>().unwrap());
    }
    out
}

/// Runs one face through a compositor with `options`; the model's output is
/// `model(crop)`. Returns the frame after.
fn composite(
    img: &RgbImage,
    a: &Alignment,
    options: CompositeOptions,
    model: impl Fn(&[f32]) -> Vec<f32>,
) -> RgbImage {
    let mut out = img.clone();
    let crop = planar_crop(&mut out, a);
    let result = model(&crop);
    Compositor::with_options(S, options)
        .unwrap()
        .apply(&mut out.as_frame(), &crop, &result, a, 1.0)
        .unwrap();
    out
}

/// The crop position of frame pixel (x, y).
fn crop_pos(a: &Alignment, x: usize, y: usize) -> Point {
    apply(
        &a.to_crop,
        Point {
            x: x as f32,
            y: y as f32,
        },
    )
}

/// Bilinear read of an SxS map at a crop position (0 outside).
fn sample(map: &[f32], p: Point) -> f32 {
    let (x0, y0) = (p.x.floor(), p.y.floor());
    let mut v = 0.0;
    for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)] {
        let (x, y) = (x0 + dx, y0 + dy);
        let w = (1.0 - (p.x - x).abs()) * (1.0 - (p.y - y).abs());
        if x >= 0.0 && y >= 0.0 && (x as usize) < S && (y as usize) < S {
            v += w * map[y as usize * S + x as usize];
        }
    }
    v
}

/// Largest per-channel change between two frames over the pixels `keep` selects.
fn max_change(a: &RgbImage, b: &RgbImage, keep: impl Fn(usize, usize) -> bool) -> i32 {
    let mut worst = 0;
    for y in 0..a.height {
        for x in 0..a.width {
            if keep(x, y) {
                let (p, q) = (a.pixel(x, y), b.pixel(x, y));
                for c in 0..3 {
                    worst = worst.max((p[c] as i32 - q[c] as i32).abs());
                }
            }
        }
    }
    worst
}

// ---------------------------------------------------------------------------------------
// Detail

fn full() -> CompositeOptions {
    CompositeOptions {
        detail: Detail::Full,
        keep_colour: true,
    }
}

/// A model that only blurs (what a regression layer does to skin texture) leaves the
/// frame within a grey level with `detail` full, outside the mouth (where a large change
/// may carry the model's own detail); plain compositing softens it all.
#[test]
fn a_blur_only_model_leaves_the_frame_within_one_grey_level_outside_the_mouth() {
    let mouth = mouth_region(&Template::lsrf(S));
    // The blurs are not the ones the fit is made of (BLUR_BASES).
    for (face_px, degrees, sigma) in [(250.0, 0.0, 1.0), (120.0, 12.0, 0.6), (500.0, -8.0, 0.9)] {
        let a = similarity(scale_for_face(face_px), degrees, (300.0, 260.0));
        let img = detailed(600, 520);
        let blur = |crop: &[f32]| blurred(crop, sigma);
        let outside_mouth = |x, y| sample(&mouth, crop_pos(&a, x, y)) == 0.0;
        let kept = composite(&img, &a, full(), blur);
        let plain = composite(&img, &a, CompositeOptions::PLAIN, blur);
        let (kept, plain) = (
            max_change(&img, &kept, outside_mouth),
            max_change(&img, &plain, outside_mouth),
        );
        eprintln!("{face_px} px face, blur {sigma}: largest change outside the mouth, detail kept {kept}, plain {plain}");
        assert!(kept <= 1, "{face_px} px: changed by {kept} grey levels");
        assert!(
            plain > 10,
            "{face_px} px: the blur should show when plain ({plain})"
        );
    }
}

/// With the default `detail` (fine), a blurring model's loss of the finest band is
/// undone: the face keeps nearly all of its sharpness (Laplacian variance, as `eval`
/// measures it), where plain compositing loses most of it.
#[test]
fn the_default_detail_keeps_the_sharpness_of_a_blurred_face() {
    let mask = face_mask(S);
    let mouth = mouth_region(&Template::lsrf(S));
    // A face of 100 px, whose crop has about the frame's resolution (on a larger face
    // the frame's finest detail is finer than the crop's and no residual touches it).
    let a = similarity(scale_for_face(100.0), 4.0, (300.0, 260.0));
    let img = detailed(600, 520);
    let blur = |crop: &[f32]| blurred(crop, 1.0);
    let face = |x, y| {
        let p = crop_pos(&a, x, y);
        sample(&mask, p) > 1.0 - 1e-3 && sample(&mouth, p) == 0.0
    };
    let before = laplacian_variance(&img, common::luma, face);
    let ratio = |options| {
        laplacian_variance(&composite(&img, &a, options, blur), common::luma, face) / before
    };
    let (fine, full, plain) = (
        ratio(CompositeOptions::default()),
        ratio(full()),
        ratio(CompositeOptions::PLAIN),
    );
    eprintln!("sharpness kept: fine {fine:.3}, full {full:.3}, plain {plain:.3}");
    assert!(
        fine > 0.8 && fine > 1.5 * plain,
        "fine kept {fine:.3} of the sharpness"
    );
    assert!(full > 0.98, "full kept {full:.3} of the sharpness");
    assert!(plain < 0.5, "plain kept {plain:.3} of the sharpness");
}

/// The same for a flow model: the appearance residual is shaped the same way (its flow
/// here is zero, so all it does is blur).
#[test]
fn a_blur_only_flow_model_leaves_the_frame_within_one_grey_level_outside_the_mouth() {
    let mouth = mouth_region(&Template::lsrf(S));
    let a = similarity(scale_for_face(250.0), 5.0, (300.0, 260.0));
    let img = detailed(600, 520);
    let mut out = img.clone();
    let crop = planar_crop(&mut out, &a);
    let result = blurred(&crop, 1.0);
    let flow = vec![0.0; 2 * S * S];
    Compositor::with_options(S, full())
        .unwrap()
        .apply_with_flow(&mut out.as_frame(), &crop, &result, Some(&flow), &a, 1.0)
        .unwrap();
    let worst = max_change(&img, &out, |x, y| sample(&mouth, crop_pos(&a, x, y)) == 0.0);
    assert!(worst <= 1, "changed by {worst} grey levels");
}

/// What a model adds that the input lacks (a thin frown crease between the brows, too
/// faint to open the coarse gates) is carried with the default `detail`: only the part
/// of the fine change that takes the input's own fine band away is dropped.
#[test]
fn a_new_fine_crease_outside_the_mouth_is_carried() {
    let a = similarity(scale_for_face(125.0), 3.0, (300.0, 260.0));
    let img = detailed(600, 520);
    let [left, right, ..] = Template::lsrf(S).points;
    let cx = ((left[0] + right[0]) / 2.0).round() as usize;
    let (top, bottom) = ((left[1] - 14.0) as usize, (left[1] - 2.0) as usize);
    let on_crease = |i: usize| i % S == cx && (top..=bottom).contains(&(i / S));
    let n = S * S;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in (0..n).filter(|&i| on_crease(i)) {
            for c in 0..3 {
                out[c * n + i] -= 0.1;
            }
        }
        out
    };
    // The crease's darkening, summed over the frame pixels on it (its fine band: the sum
    // over a wider strip would keep a blurred crease's darkening too).
    let near_crease = |x: usize, y: usize| {
        let p = crop_pos(&a, x, y);
        (p.x - cx as f32).abs() <= 0.5 && p.y >= top as f32 && p.y <= bottom as f32
    };
    let darkening = |out: &RgbImage| {
        let mut sum = 0.0;
        for y in 0..img.height {
            for x in (0..img.width).filter(|&x| near_crease(x, y)) {
                let (p, q) = (img.pixel(x, y), out.pixel(x, y));
                sum += (0..3).map(|c| p[c] as f64 - q[c] as f64).sum::<f64>();
            }
        }
        sum
    };
    let kept = darkening(&composite(&img, &a, CompositeOptions::default(), model));
    let plain = darkening(&composite(&img, &a, CompositeOptions::PLAIN, model));
    eprintln!("crease darkening: default {kept:.0}, plain {plain:.0}");
    assert!(
        plain > 150.0,
        "the crease should show when plain ({plain:.0})"
    );
    assert!(
        kept > 0.85 * plain,
        "the default kept {kept:.0} of the crease's {plain:.0}"
    );
}

/// A large coarse change (a dark opened mouth) is carried with the model's own detail.
#[test]
fn a_large_change_is_carried_whole() {
    let a = similarity(scale_for_face(250.0), 0.0, (300.0, 260.0));
    let img = detailed(600, 520);
    let [_, _, _, [mx, my]] = Template::lsrf(S).points;
    let n = S * S;
    // The model paints a dark mouth, 20 x 10 crop px, flat (no texture).
    let in_mouth = |i: usize| {
        let (x, y) = ((i % S) as f32 - mx, (i / S) as f32 - my);
        (x / 10.0).powi(2) + (y / 5.0).powi(2) <= 1.0
    };
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in (0..n).filter(|&i| in_mouth(i)) {
            for c in 0..3 {
                out[c * n + i] = [0.25, 0.08, 0.08][c];
            }
        }
        out
    };
    let kept = composite(&img, &a, CompositeOptions::default(), model);
    let plain = composite(&img, &a, CompositeOptions::PLAIN, model);
    // Well inside the painted mouth both give the model's flat dark red.
    let centre = apply(&a.to_frame, Point { x: mx, y: my });
    let (cx, cy) = (centre.x as usize, centre.y as usize);
    for (x, y) in [(cx, cy), (cx + 6, cy), (cx - 6, cy + 2)] {
        let (k, p) = (kept.pixel(x, y), plain.pixel(x, y));
        for c in 0..3 {
            assert!(
                (k[c] as i32 - p[c] as i32).abs() <= 6,
                "({x}, {y}): kept {k:?}, plain {p:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Colour

/// RGB -> (Y, Cb, Cr), BT.601, 0-255.
fn ycbcr(p: [u8; 3]) -> [f64; 3] {
    let [r, g, b] = p.map(|v| v as f64);
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [y, 0.564 * (b - y), 0.713 * (r - y)]
}

/// A 600x520 frame of `outside`, with `inside` where `inside_at` holds for the pixel's
/// crop position under `a`.
fn two_tone(
    a: &Alignment,
    inside_at: impl Fn(Point) -> bool,
    inside: [u8; 3],
    outside: [u8; 3],
) -> RgbImage {
    let mut img = RgbImage::new(600, 520);
    for y in 0..img.height {
        for x in 0..img.width {
            let px = if inside_at(crop_pos(a, x, y)) {
                inside
            } else {
                outside
            };
            let i = (y * img.width + x) * 3;
            img.data[i..i + 3].copy_from_slice(&px);
        }
    }
    img
}

/// The crop position of planar index `i`.
fn crop_point(i: usize) -> Point {
    Point {
        x: (i % S) as f32,
        y: (i / S) as f32,
    }
}

/// A model that takes a specular highlight off the cheek (white light on the skin)
/// leaves the skin's own colour there with `keep_colour` on, not a grey patch: the
/// darkening takes white light away instead of scaling the pale highlight's colour.
#[test]
fn a_removed_highlight_leaves_the_skin_colour_not_grey() {
    let a = similarity(scale_for_face(250.0), 4.0, (300.0, 260.0));
    let (skin, highlight) = ([180u8, 130, 105], [240u8, 190, 165]); // skin + white light
    let centre = (30.0, 72.0); // the image-left cheek, outside the mouth's region
    let on_highlight =
        |p: Point| ((p.x - centre.0).powi(2) + (p.y - centre.1).powi(2)).sqrt() <= 6.0;
    let img = two_tone(&a, on_highlight, highlight, skin);
    let n = S * S;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            if on_highlight(crop_point(i)) {
                for c in 0..3 {
                    out[c * n + i] = skin[c] as f32 / 255.0;
                }
            }
        }
        out
    };
    let kept = composite(&img, &a, CompositeOptions::default(), model);
    // The highlight darkened to the skin's brightness in proportion to its own colour
    // (what keeping colours did before): paler than the skin.
    let [y_skin, cb_skin, cr_skin] = ycbcr(skin);
    let [y_high, ..] = ycbcr(highlight);
    let scaled = highlight.map(|v| (v as f64 * y_skin / y_high).round() as u8);
    let [_, cb_scaled, cr_scaled] = ycbcr(scaled);
    let (mut worst, mut pixels) = (0.0f64, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            let p = crop_pos(&a, x, y);
            if ((p.x - centre.0).powi(2) + (p.y - centre.1).powi(2)).sqrt() > 4.0 {
                continue;
            }
            pixels += 1;
            let [_, cb, cr] = ycbcr(kept.pixel(x, y));
            worst = worst.max((cb - cb_skin).abs().max((cr - cr_skin).abs()));
        }
    }
    let scaled_off = (cb_scaled - cb_skin).abs().max((cr_scaled - cr_skin).abs());
    eprintln!(
        "{pixels} highlight pixels: chroma off the skin's by at most {worst:.1} (darkened in proportion: {scaled_off:.1})"
    );
    assert!(pixels > 50);
    assert!(scaled_off > 8.0, "the test's highlight should be pale");
    assert!(
        worst < 0.35 * scaled_off,
        "chroma off by {worst:.1} where proportional darkening is off by {scaled_off:.1}"
    );
}

/// CIELAB (D65) of an sRGB pixel: L* 0-100, a*, b*.
fn lab(p: [u8; 3]) -> [f64; 3] {
    let linear = p.map(|v| {
        let c = v as f64 / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    let xyz = [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
    .map(|row: [f64; 3]| row.iter().zip(&linear).map(|(m, c)| m * c).sum::<f64>());
    let f = |t: f64| {
        if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let [fx, fy, fz] = [f(xyz[0] / 0.950456), f(xyz[1]), f(xyz[2] / 1.088754)];
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// A model that brightens the cheek (as light does: every channel in proportion)
/// brightens it with `keep_colour` on, and the skin keeps its CIELAB colour (a*, b*);
/// carried as it is, the warm skin turns more saturated.
#[test]
fn a_brightened_cheek_keeps_its_cielab_colour_with_keep_colour() {
    let a = similarity(scale_for_face(250.0), 4.0, (300.0, 260.0));
    let skin = [200u8, 150, 130];
    let img = two_tone(&a, |_| false, skin, skin);
    let centre = (34.0, 70.0); // the image-left cheek, outside the mouth's region
    let dist = |p: Point| ((p.x - centre.0).powi(2) + (p.y - centre.1).powi(2)).sqrt();
    let n = S * S;
    // Up to +14 grey levels of luma at the centre, falling off smoothly: every whole
    // and fractional step in between.
    let gain = |p: Point| 1.0 + 14.0 * (-(dist(p) / 9.0).powi(2)).exp() / common::luma(skin) as f32;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            for c in 0..3 {
                out[c * n + i] *= gain(crop_point(i));
            }
        }
        out
    };
    let kept = composite(&img, &a, CompositeOptions::default(), model);
    let peak = gain(Point {
        x: centre.0,
        y: centre.1,
    });
    let lit = skin.map(|v| (v as f32 * peak).round() as u8);
    let ab_change = |p: [u8; 3]| {
        let (x, y) = (lab(p), lab(skin));
        (x[1] - y[1]).hypot(x[2] - y[2])
    };
    let (mut worst, mut sum, mut brightening, mut pixels) = (0.0f64, 0.0, 0.0f64, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            if dist(crop_pos(&a, x, y)) > 9.0 {
                continue;
            }
            pixels += 1;
            let p = kept.pixel(x, y);
            worst = worst.max(ab_change(p));
            sum += ab_change(p);
            brightening = brightening.max(common::luma(p) - common::luma(skin));
        }
    }
    let mean = sum / pixels.max(1) as f64;
    eprintln!(
        "{pixels} cheek pixels: a*b* change {mean:.2} on average, at most {worst:.2} (carried as it is {:.2} at the centre), luma up to +{brightening:.1}",
        ab_change(lit)
    );
    assert!(pixels > 100);
    assert!(
        ab_change(lit) > 1.0,
        "the test's light should saturate the skin"
    );
    assert!(
        brightening >= 11.0,
        "the brightening was not carried: +{brightening:.1}"
    );
    // One level in one channel of this skin is an a*b* change of up to about 0.5: whole
    // levels cannot keep every pixel closer.
    assert!(
        mean <= 0.3,
        "the skin's a*b* changed by {mean:.2} on average"
    );
    assert!(worst <= 0.6, "the skin's a*b* changed by up to {worst:.2}");
}

/// A model that turns a blue iris brown (same brightness) leaves its colour as it was
/// with `keep_colour` on; plain compositing makes it brown.
#[test]
fn a_recoloured_iris_keeps_its_chroma_with_keep_colour() {
    let t = Template::lsrf(S);
    let eye = t.points[0];
    let a = similarity(scale_for_face(250.0), 7.0, (300.0, 260.0));
    // Skin, with a blue iris (radius 5 crop px) at the template's image-left eye.
    let iris_at = |p: Point| ((p.x - eye[0]).powi(2) + (p.y - eye[1]).powi(2)).sqrt() <= 5.0;
    let img = two_tone(&a, iris_at, [70, 110, 170], [205, 160, 140]);
    // The model gives each iris pixel a brown's colour at the pixel's own brightness
    // (luma kept, chroma replaced).
    let brown = [0.55f32, 0.37, 0.22];
    let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let n = S * S;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            if iris_at(crop_point(i)) {
                let y = luma([crop[i], crop[n + i], crop[2 * n + i]]);
                for c in 0..3 {
                    out[c * n + i] = y + brown[c] - luma(brown);
                }
            }
        }
        out
    };
    let kept = composite(&img, &a, CompositeOptions::default(), model);
    let plain = composite(&img, &a, CompositeOptions::PLAIN, model);
    let (mut worst_kept, mut worst_plain, mut pixels) = (0.0f64, 0.0f64, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            let p = crop_pos(&a, x, y);
            // The iris's inner part (its rim is a blend of iris and skin in the crop).
            if ((p.x - eye[0]).powi(2) + (p.y - eye[1]).powi(2)).sqrt() > 3.5 {
                continue;
            }
            pixels += 1;
            let before = ycbcr(img.pixel(x, y));
            for (frame, worst) in [(&kept, &mut worst_kept), (&plain, &mut worst_plain)] {
                let after = ycbcr(frame.pixel(x, y));
                for c in 1..3 {
                    *worst = worst.max((after[c] - before[c]).abs());
                }
            }
        }
    }
    eprintln!(
        "{pixels} iris pixels: largest chroma change kept {worst_kept:.2}, plain {worst_plain:.2}"
    );
    assert!(pixels > 100);
    assert!(worst_kept <= 1.5, "iris chroma changed by {worst_kept:.2}");
    assert!(
        worst_plain > 20.0,
        "plain should recolour ({worst_plain:.2})"
    );
}

/// A model that fades the iris towards a lighter mean eye (a cross-fade halfway to the
/// crop blurred by 8 pixels, around the eye) leaves the iris's darkness as it was with
/// `detail` full; the default carries the fade. A model that darkens the iris instead
/// (adds to its contrast) is carried. The iris (5 crop pixels in radius) lies 6 crop
/// pixels beside the template's eye point and 3 below, as on a face whose proportions
/// differ from the template's: it has to be found.
#[test]
fn a_faded_iris_keeps_its_darkness_with_full_detail() {
    let t = Template::lsrf(S);
    let eye = [t.points[1][0] - 6.0, t.points[1][1] + 3.0];
    let a = similarity(scale_for_face(250.0), -6.0, (300.0, 260.0));
    let dist = |p: Point| ((p.x - eye[0]).powi(2) + (p.y - eye[1]).powi(2)).sqrt();
    let brown = [62u8, 40, 28];
    let img = two_tone(&a, |p| dist(p) <= 5.0, brown, [205, 160, 140]);
    let n = S * S;
    let model = |crop: &[f32]| {
        let mean_eye = blurred(crop, 8.0);
        let mut out = crop.to_vec();
        for i in 0..n {
            // Half-way to the mean eye over the eye, fading out by 12 crop pixels.
            let w = 0.5 * ((12.0 - dist(crop_point(i))) / 4.0).clamp(0.0, 1.0);
            for c in 0..3 {
                let k = c * n + i;
                out[k] += w * (mean_eye[k] - crop[k]);
            }
        }
        out
    };
    let kept = composite(&img, &a, full(), model);
    let faded = composite(&img, &a, CompositeOptions::default(), model);
    let darken = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            if dist(crop_point(i)) <= 5.0 {
                for c in 0..3 {
                    out[c * n + i] *= 0.6;
                }
            }
        }
        out
    };
    let darkened = composite(&img, &a, full(), darken);
    let (mut worst_kept, mut least_faded, mut least_darkened, mut pixels) =
        (0.0f64, f64::MAX, f64::MAX, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            if dist(crop_pos(&a, x, y)) > 3.5 {
                continue;
            }
            pixels += 1;
            let before = ycbcr(img.pixel(x, y))[0];
            worst_kept = worst_kept.max((ycbcr(kept.pixel(x, y))[0] - before).abs());
            least_faded = least_faded.min(ycbcr(faded.pixel(x, y))[0] - before);
            least_darkened = least_darkened.min(before - ycbcr(darkened.pixel(x, y))[0]);
        }
    }
    eprintln!(
        "{pixels} iris pixels: luma change with full detail up to {worst_kept:.1}, with the default at least +{least_faded:.1}; darkened by at least {least_darkened:.1}"
    );
    assert!(pixels > 100);
    assert!(
        least_faded > 15.0,
        "the default should carry the fade (+{least_faded:.1})"
    );
    assert!(
        worst_kept <= 2.0,
        "the iris lightened by {worst_kept:.1} with full detail"
    );
    // 40 % of the iris's luma (about 44 levels) is about 18 levels.
    assert!(
        least_darkened >= 14.0,
        "a darkening was not carried: {least_darkened:.1}"
    );
}

/// A model that paints a cheek patch lavender and lighter (a turn of its hue, as
/// `models/usgan` paints skin and irises) leaves the patch as it was with `keep_colour`
/// on, its brightness too: that paint's luma is not the person's. Plain compositing
/// carries it. (A change of brightness that keeps the hue is still carried:
/// `a_brightened_cheek_keeps_its_cielab_colour_with_keep_colour`.)
#[test]
fn a_repainted_cheek_keeps_its_colour_and_brightness_with_keep_colour() {
    let a = similarity(scale_for_face(250.0), 3.0, (300.0, 260.0));
    let centre = (34.0, 70.0); // the image-left cheek, outside the mouth's region
    let dist = |p: Point| ((p.x - centre.0).powi(2) + (p.y - centre.1).powi(2)).sqrt();
    let skin = [205u8, 160, 140];
    let img = two_tone(&a, |_| false, skin, skin);
    let lavender = [200.0f32 / 255.0, 175.0 / 255.0, 220.0 / 255.0];
    let n = S * S;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            // Painted over a disc of 12 crop pixels, fading out over 4 more.
            let w = ((16.0 - dist(crop_point(i))) / 4.0).clamp(0.0, 1.0);
            for c in 0..3 {
                out[c * n + i] += w * (lavender[c] - crop[c * n + i]);
            }
        }
        out
    };
    let kept = composite(&img, &a, CompositeOptions::default(), model);
    let plain = composite(&img, &a, CompositeOptions::PLAIN, model);
    let (mut worst_kept, mut worst_plain, mut pixels) = ([0.0f64; 3], [0.0f64; 3], 0);
    for y in 0..img.height {
        for x in 0..img.width {
            if dist(crop_pos(&a, x, y)) > 8.0 {
                continue;
            }
            pixels += 1;
            let before = ycbcr(img.pixel(x, y));
            for (frame, worst) in [(&kept, &mut worst_kept), (&plain, &mut worst_plain)] {
                let after = ycbcr(frame.pixel(x, y));
                for c in 0..3 {
                    worst[c] = worst[c].max((after[c] - before[c]).abs());
                }
            }
        }
    }
    eprintln!(
        "{pixels} painted pixels: largest Y / Cb / Cr change kept {worst_kept:.2?}, plain {worst_plain:.2?}"
    );
    assert!(pixels > 100);
    assert!(
        worst_plain[0] > 12.0 && worst_plain[1].max(worst_plain[2]) > 20.0,
        "plain should carry the paint ({worst_plain:.2?})"
    );
    assert!(
        worst_kept.iter().all(|&d| d <= 1.5),
        "the repainted cheek changed by up to {worst_kept:.2?} (Y, Cb, Cr)"
    );
}

/// Teeth appearing in the mouth (a large brightness and colour change) keep their colour.
#[test]
fn colour_changes_pass_where_the_mouth_changes_a_lot() {
    let [_, _, _, [mx, my]] = Template::lsrf(S).points;
    let a = similarity(scale_for_face(250.0), 0.0, (300.0, 260.0));
    let mut img = RgbImage::new(600, 520);
    for px in img.data.chunks_exact_mut(3) {
        px.copy_from_slice(&[180, 110, 110]); // lips
    }
    let n = S * S;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            let (x, y) = ((i % S) as f32 - mx, (i / S) as f32 - my);
            if (x / 14.0).powi(2) + (y / 6.0).powi(2) <= 1.0 {
                for c in 0..3 {
                    out[c * n + i] = [0.93, 0.92, 0.85][c];
                }
            }
        }
        out
    };
    let kept = composite(&img, &a, CompositeOptions::default(), model);
    let centre = apply(&a.to_frame, Point { x: mx, y: my });
    let p = kept.pixel(centre.x as usize, centre.y as usize);
    let want = [237, 235, 217];
    for c in 0..3 {
        assert!(
            (p[c] as i32 - want[c]).abs() <= 4,
            "teeth came out {p:?}, the model made {want:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Seams

/// Largest gradient (central differences, grey levels per pixel, any channel) of the
/// frame over the pixels `keep` selects.
fn max_gradient(img: &RgbImage, keep: impl Fn(usize, usize) -> bool) -> f64 {
    let mut worst = 0.0f64;
    for y in 1..img.height - 1 {
        for x in 1..img.width - 1 {
            if !keep(x, y) {
                continue;
            }
            for c in 0..3 {
                let v = |x: usize, y: usize| img.pixel(x, y)[c] as f64;
                let gx = 0.5 * (v(x + 1, y) - v(x - 1, y));
                let gy = 0.5 * (v(x, y + 1) - v(x, y - 1));
                worst = worst.max((gx * gx + gy * gy).sqrt());
            }
        }
    }
    worst
}

/// On flat skin, a model whose skin tone differs from the person's (brighter, warmer,
/// with a lighting tilt), and which also opens the mouth: no edge where the mask ends.
/// The gradient across the mask's feathered rim is no larger than the gradient inside
/// on the flat skin (away from the mouth) at every face size; plain compositing draws
/// the edge at small faces.
#[test]
fn no_seam_at_the_mask_edge_on_flat_skin_at_any_face_size() {
    let t = Template::lsrf(S);
    let mouth = mouth_region(&t);
    let mask = face_mask(S);
    let [_, _, _, [mx, my]] = t.points;
    let n = S * S;
    let model = |crop: &[f32]| {
        let mut out = crop.to_vec();
        for i in 0..n {
            let (x, y) = ((i % S) as f32, (i / S) as f32);
            let tilt = 0.03 * (x / S as f32 - 0.5);
            let shift = [0.07 + tilt, 0.04 + tilt, 0.0 + tilt];
            let in_mouth = ((x - mx) / 12.0).powi(2) + ((y - my) / 5.0).powi(2) <= 1.0;
            for c in 0..3 {
                out[c * n + i] = if in_mouth {
                    [0.3, 0.1, 0.1][c]
                } else {
                    (crop[c * n + i] + shift[c]).min(1.0)
                };
            }
        }
        out
    };
    for face_px in [60.0, 250.0, 600.0] {
        let scale = scale_for_face(face_px);
        let centre = (70.0 + 0.6 * S as f64 * scale, 60.0 + 0.6 * S as f64 * scale);
        let (w, h) = ((2.0 * centre.0) as usize, (2.0 * centre.1) as usize);
        let a = similarity(scale, 10.0, centre);
        let mut img = RgbImage::new(w, h);
        for px in img.data.chunks_exact_mut(3) {
            px.copy_from_slice(&[200, 150, 130]);
        }
        // (Bilinear reads of a mask of ones can fall a rounding error short of 1.)
        let rim = |x, y| {
            let m = sample(&mask, crop_pos(&a, x, y));
            m > 1e-3 && m < 1.0 - 1e-3
        };
        let flat_inside = |x, y| {
            let p = crop_pos(&a, x, y);
            sample(&mask, p) > 1.0 - 1e-3 && sample(&mouth, p) == 0.0
        };
        let seam = |options| {
            let out = composite(&img, &a, options, model);
            (max_gradient(&out, rim), max_gradient(&out, flat_inside))
        };
        let (rim_kept, inside_kept) = seam(CompositeOptions::default());
        let (rim_plain, inside_plain) = seam(CompositeOptions::PLAIN);
        eprintln!(
            "{face_px} px face: gradient at the rim / inside: kept {rim_kept:.2} / {inside_kept:.2}, plain {rim_plain:.2} / {inside_plain:.2}"
        );
        // Rounding to whole grey levels makes steps of 1 anywhere a change is not flat.
        assert!(
            rim_kept <= inside_kept.max(1.0),
            "{face_px} px: the rim's gradient {rim_kept:.2} exceeds the inside's {inside_kept:.2}"
        );
        if face_px == 60.0 {
            assert!(rim_plain > 2.0, "plain compositing should show the seam");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Turned heads

/// Rotates a 3-D point by yaw (about the vertical axis; the nose, z > 0, moves to +x),
/// then pitch (the nose moves down, +y), then roll (clockwise in the image), written
/// out independently of the estimator.
fn rotate(p: [f64; 3], yaw: f64, pitch: f64, roll: f64) -> [f64; 3] {
    let [x, y, z] = p;
    let (s, c) = yaw.to_radians().sin_cos();
    let (x, z) = (c * x + s * z, -s * x + c * z);
    let (s, c) = pitch.to_radians().sin_cos();
    let (y, z) = (c * y + s * z, -s * y + c * z);
    let (s, c) = roll.to_radians().sin_cos();
    let (x, y) = (c * x - s * y, s * x + c * y);
    [x, y, z]
}

/// The six keypoints of `template` (mm) rotated, seen by a pinhole camera `distance` mm
/// away, `scale` pixels per mm at the head's centre, centred at (320, 240).
fn keypoints(
    template: &[[f64; 3]; 6],
    (yaw, pitch, roll): (f64, f64, f64),
    distance: f64,
    scale: f64,
) -> [Point; 6] {
    template.map(|p| {
        let [x, y, z] = rotate(p, yaw, pitch, roll);
        let f = distance / (distance - z); // nearer points look bigger
        Point {
            x: (320.0 + scale * f * x) as f32,
            y: (240.0 + scale * f * y) as f32,
        }
    })
}

fn template_f64() -> [[f64; 3]; 6] {
    TEMPLATE_MM.map(|p| p.map(|v| v as f64))
}

#[test]
fn yaw_from_the_template_itself_is_exact_and_pitch_and_roll_are_found() {
    let t = template_f64();
    for yaw in [-45.0, -30.0, -10.0, 0.0, 20.0, 45.0] {
        for (pitch, roll) in [(0.0, 0.0), (12.0, -8.0), (-15.0, 20.0)] {
            let k = keypoints(&t, (yaw, pitch, roll), 1e9, 3.0);
            let p = HeadPose::estimate(&k);
            let err = |got: f32, want: f64| (got as f64 - want).abs();
            assert!(
                err(p.yaw, yaw) < 0.5 && err(p.pitch, pitch) < 0.5 && err(p.roll, roll) < 0.5,
                "({yaw}, {pitch}, {roll}) estimated as {p:?}"
            );
        }
    }
}

/// The template's keypoints seen by a pinhole camera at arm's length, with keypoint
/// noise, and heads of slightly other proportions: yaw is within 5 degrees up to 45.
#[test]
fn yaw_estimates_are_within_5_degrees_up_to_45_on_other_heads() {
    let base = template_f64();
    // The template, and heads 5 % wider and flatter or narrower and deeper (each
    // point's x, y, z scaled). A head much flatter than the template looks less
    // turned than it is: 15 % flatter reads 45 degrees as about 41.
    let heads = [(1.0, 1.0, 1.0), (1.05, 0.97, 0.95), (0.95, 1.03, 1.05)];
    let mut seed = 12345u64;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 2.0 // [-1, 1)
    };
    let mut worst = 0.0f64;
    for (sx, sy, sz) in heads {
        let t = base.map(|[x, y, z]| [x * sx, y * sy, z * sz]);
        for yaw in (-9..=9).map(|i| 5.0 * i as f64) {
            for (pitch, roll) in [(0.0, 0.0), (10.0, 5.0), (-10.0, -12.0)] {
                let mut k = keypoints(&t, (yaw, pitch, roll), 600.0, 2.5);
                for p in k.iter_mut() {
                    // About 1 % of the eye distance (63 mm * 2.5 px/mm).
                    p.x += (1.5 * noise()) as f32;
                    p.y += (1.5 * noise()) as f32;
                }
                let est = HeadPose::estimate(&k).yaw as f64;
                worst = worst.max((est - yaw).abs());
                assert!(
                    (est - yaw).abs() <= 5.0,
                    "head ({sx}, {sy}, {sz}) at yaw {yaw}, pitch {pitch}, roll {roll}: estimated {est:.1}"
                );
            }
        }
    }
    eprintln!("largest yaw error {worst:.2} degrees");
}

#[test]
fn the_fade_is_full_below_the_ramp_and_zero_past_the_limit() {
    assert_eq!(yaw_strength(0.0, 35.0), 1.0);
    assert_eq!(yaw_strength(-20.0, 35.0), 1.0);
    assert_eq!(yaw_strength(35.0, 35.0), 0.0);
    assert_eq!(yaw_strength(-36.0, 35.0), 0.0);
    assert_eq!(yaw_strength(80.0, 35.0), 0.0);
    let mid = yaw_strength(27.5, 35.0);
    assert!((mid - 0.5).abs() < 1e-5, "{mid}");
    // Monotone and continuous along the ramp.
    let mut last = 1.0;
    for i in 0..=400 {
        let s = yaw_strength(20.0 + 15.0 * i as f32 / 400.0, 35.0);
        assert!(s <= last && last - s < 0.01, "{s} after {last}");
        last = s;
    }
    assert_eq!(yaw_strength(89.0, 90.0), 1.0, "90 never fades");
    assert_eq!(yaw_strength(10.0, 0.0), 0.0, "0 edits frontal faces only");
}

/// A face with the given pose, 250 px wide, its alignment points where the keypoints
/// are (the detector is bypassed).
fn posed_face(yaw: f64) -> Face {
    let k = keypoints(&template_f64(), (yaw, 0.0, 0.0), 600.0, 2.0);
    Face {
        bbox: BoxF {
            x: 200.0,
            y: 130.0,
            w: 250.0,
            h: 250.0,
        },
        keypoints: k,
        score: 1.0,
    }
}

/// Through the processor with a tiny model that moves the face: a frontal face is
/// changed at full strength, a face turned past `max_yaw` is left bit-identical, and
/// the report carries the yaw and the strength.
#[test]
fn the_processor_fades_the_edit_out_on_turned_heads() {
    if !reggan::model::onnxruntime_path().is_file() {
        eprintln!("skipping: needs ONNX Runtime (run scripts/setup.sh)");
        return;
    }
    let Ok(detector) = FaceDetector::new(DetectorKind::Haar) else {
        eprintln!("skipping: no Haar cascade");
        return;
    };
    let dir = common::temp_dir("compositing-yaw");
    let s = 64;
    let m = common::manifest(2, s, &["happy"], &["face_out", "flow"]);
    common::write_model(
        &dir,
        &m,
        &common::FlowOutput::PerExpression(vec![common::constant_flow(s, 2.0, -1.0)]),
    );
    let model = ExpressionModel::load(&dir, Device::Cpu, 1).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let config = ProcessorConfig {
        min_face_size: 0.0,
        device: Device::Cpu,
        ..Default::default()
    };
    assert_eq!(config.max_yaw, 35.0);
    let mut p = FrameProcessor::from_parts(model, detector, config).unwrap();
    let img = detailed(640, 480);
    for (yaw, want) in [
        (0.0, 1.0),
        (-12.0, 1.0),
        (27.5, 0.5),
        (40.0, 0.0),
        (-55.0, 0.0),
    ] {
        let mut out = img.clone();
        let report = p
            .process_faces(&mut out.as_frame(), vec![posed_face(yaw)])
            .unwrap();
        assert_eq!(report.faces.len(), 1);
        let edit = report.edits[0];
        eprintln!("yaw {yaw}: {edit:?}");
        assert!(
            (edit.pose.yaw as f64 - yaw).abs() <= 5.0,
            "yaw {yaw}: {edit:?}"
        );
        assert!((edit.strength - want).abs() < 0.15, "yaw {yaw}: {edit:?}");
        if want == 0.0 {
            assert_eq!(out, img, "a face turned {yaw} degrees was changed");
        } else {
            assert_ne!(out, img, "a face turned {yaw} degrees was not changed");
        }
    }
    // max_yaw 90 edits every face.
    p.set_max_yaw(90.0);
    let mut out = img.clone();
    let report = p
        .process_faces(&mut out.as_frame(), vec![posed_face(40.0)])
        .unwrap();
    assert_eq!(report.edits[0].strength, 1.0);
    assert_ne!(out, img);
}
