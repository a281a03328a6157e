//! `reggan-train gan` interrupted: killed (SIGKILL) in the middle of a checkpoint, and
//! out of disk space while writing one. The previous checkpoint stays loadable, and
//! `--resume` ends where an uninterrupted run with the same seed ends.
//!
//! The trainer runs as a child process on a synthetic 32 px cache (US-GAN, `small`
//! config, no perceptual loss): a few seconds per run on a CPU.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use reggan::{RgbImage, Template};
use reggan_trainer::data::{Entry, Index};
use tch::Tensor;

const STEPS: usize = 6;
const EVERY: usize = 2;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "reggan-interrupted-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A prepared cache of noise crops: three training subjects and one for validation,
/// each with a neutral and a happy and a sad crop.
fn synthetic_cache(name: &str) -> PathBuf {
    let cache = tmp(name);
    let s = 32;
    let mut entries = Vec::new();
    let mut seed = 0x2545_f491_u32;
    for subject in ["s0", "s1", "s2", "v0"] {
        for expression in ["neutral", "happy", "sad"] {
            let mut img = RgbImage::new(s, s);
            for v in img.data.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *v = (seed >> 24) as u8;
            }
            let path = format!("{subject}_{expression}.png");
            img.save(&cache.join(&path)).unwrap();
            entries.push(Entry {
                dataset: "synthetic".into(),
                subject: format!("synthetic/{subject}"),
                expression: expression.into(),
                path,
                source: String::new(),
            });
        }
    }
    Index {
        crop_size: s,
        template: Template::lsrf(s),
        entries,
        train_subjects: ["s0", "s1", "s2"]
            .map(|s| format!("synthetic/{s}"))
            .to_vec(),
        val_subjects: vec!["synthetic/v0".into()],
        skipped: vec![],
    }
    .write(&cache)
    .unwrap();
    cache
}

/// The trainer's command line for a run in `out` to `steps` (`--resume` when `resume`).
fn train(cache: &Path, out: &Path, steps: usize, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reggan-train"));
    c.args([
        "gan",
        "--model",
        "usgan",
        "--perceptual",
        "none",
        "--batch",
        "2",
    ])
    .args(["--seed", "5", "--steps", &steps.to_string()])
    .args(["--every", &EVERY.to_string()])
    .arg("--cache")
    .arg(cache)
    .arg("--out")
    .arg(out)
    .env("REGGAN_THREADS", "1")
    .env_remove("REGGAN_TEST_CHECKPOINT_PAUSE");
    if resume {
        c.arg("--resume");
    }
    c
}

/// Runs the trainer to success; returns its stdout and stderr.
fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{c:?} failed: {}\n{text}", out.status);
    text
}

/// Starts a run that stops in the checkpoint of `step` at `point`, waits until it
/// says so, and kills it with SIGKILL.
fn kill_during_checkpoint(cache: &Path, out: &Path, point: &str, step: usize) {
    let mut c = train(cache, out, STEPS, false);
    c.env("REGGAN_TEST_CHECKPOINT_PAUSE", format!("{point}@{step}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let paused = line.contains("checkpoint paused");
        log.push(line);
        if paused {
            break;
        }
    }
    // Child::kill is SIGKILL on Unix: kill -9.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        log.iter().any(|l| l.contains("checkpoint paused")),
        "the trainer ended without reaching the checkpoint of step {step} ({status}):\n{}",
        log.join("\n")
    );
}

fn state_step(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["step"].as_u64().unwrap() as usize
}

fn weights(run: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(run.join("gen.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_difference(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different variables"
    );
    a.iter()
        .map(|(k, t)| f64::try_from((t - &b[k]).abs().max()).unwrap())
        .fold(0.0, f64::max)
}

fn staged_files(run: &Path) -> Vec<String> {
    std::fs::read_dir(run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".next.") || n.ends_with(".tmp"))
        .collect()
}

#[test]
fn killed_during_a_checkpoint_resumes_to_the_uninterrupted_result() {
    let cache = synthetic_cache("cache-kill");
    let straight = tmp("straight");
    run_ok(train(&cache, &straight, STEPS, false));
    assert_eq!(state_step(&straight), STEPS);
    let expected = weights(&straight);

    for point in ["staged", "committed"] {
        let run = tmp(point);
        kill_during_checkpoint(&cache, &run, point, 2 * EVERY);
        // Before the commit the previous checkpoint is the one on disk; after it, the
        // new one is, waiting to be moved in.
        let (on_disk, resumed_from) = match point {
            "staged" => (EVERY, EVERY),
            _ => (EVERY, 2 * EVERY),
        };
        assert_eq!(state_step(&run), on_disk, "{point}: state.json");
        assert!(
            !staged_files(&run).is_empty(),
            "{point}: the kill came after the save finished"
        );
        // The checkpoint on disk loads as it is.
        assert!(!weights(&run).is_empty());
        let log = run_ok(train(&cache, &run, STEPS, true));
        assert!(
            log.contains(&format!("resumed {} at step {resumed_from}", run.display())),
            "{point}: {log}"
        );
        assert_eq!(state_step(&run), STEPS, "{point}");
        assert!(
            staged_files(&run).is_empty(),
            "{point}: {:?}",
            staged_files(&run)
        );
        let diff = max_difference(&weights(&run), &expected);
        eprintln!("{point}: resumed from step {resumed_from}, max |difference| {diff:e}");
        assert!(
            diff <= 1e-6,
            "{point}: resumed run ends {diff} away from the uninterrupted one"
        );
        let _ = std::fs::remove_dir_all(&run);
    }

    // What the optimiser's moments are for: resumed without them, the run ends
    // elsewhere (so the comparison above can tell).
    let run = tmp("no-moments");
    run_ok(train(&cache, &run, EVERY, false));
    for file in ["gen-adam.safetensors", "disc-adam.safetensors"] {
        std::fs::remove_file(run.join(file)).unwrap();
    }
    run_ok(train(&cache, &run, STEPS, true));
    let diff = max_difference(&weights(&run), &expected);
    eprintln!("resumed without the optimiser's moments: max |difference| {diff:e}");
    assert!(diff > 1e-4, "moments made no difference ({diff})");
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint() {
    let cache = synthetic_cache("cache-full");
    let run = tmp("full");
    run_ok(train(&cache, &run, EVERY, false));
    assert_eq!(state_step(&run), EVERY);
    let before = std::fs::read(run.join("gen.safetensors")).unwrap();

    // Files of at most 64 KB (bash's `ulimit -f` counts 1024-byte blocks): config.json
    // fits, the generator's weights do not. SIGXFSZ ignored, so the write fails with
    // EFBIG like on a full disk instead of killing the process.
    assert!(before.len() > 64 * 1024, "the weights fit under the limit");
    let resume = train(&cache, &run, STEPS, true);
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("ulimit -f 64; trap '' XFSZ; exec \"$@\"")
        .arg("limited")
        .arg(resume.get_program())
        .args(resume.get_args())
        .env("REGGAN_THREADS", "1");
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        !out.status.success(),
        "the trainer succeeded over the limit"
    );
    assert!(
        stderr.contains(&format!("checkpoint of step {} not written", 2 * EVERY))
            && stderr.contains("keeps the previous one")
            && stderr.contains("gen.next.safetensors"),
        "unclear error: {stderr}"
    );
    assert!(staged_files(&run).is_empty(), "{:?}", staged_files(&run));
    assert_eq!(state_step(&run), EVERY);
    assert!(
        std::fs::read(run.join("gen.safetensors")).unwrap() == before,
        "the previous checkpoint's weights changed"
    );
    // And it resumes from there once there is room.
    run_ok(train(&cache, &run, STEPS, true));
    assert_eq!(state_step(&run), STEPS);
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::remove_dir_all(&cache);
}
