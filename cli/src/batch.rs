//! `reggan apply` on many files: directories searched recursively, several files at
//! once (`--jobs`), an overall progress bar above the per-file ones, and `--resume`.
//!
//! Every output is written under a hidden temporary name next to it and renamed into
//! place when complete (a rename within a directory is atomic), so a file under an
//! output's name is always finished: that is what lets `--resume` skip it. A run that
//! is killed leaves at most the temporary files, which the next run removes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::apply::{ApplyArgs, Job};

#[derive(Args, Debug, Clone)]
pub struct BatchArgs {
    /// Files processed at the same time (the CPU cores are shared out between them)
    #[arg(short, long, default_value_t = 1, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Skip inputs whose output exists (finished by an earlier run; outputs are only
    /// ever renamed into place complete)
    #[arg(long)]
    pub resume: bool,
}

fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

/// One input file and its path below the directory it was found in (its file name when
/// it was given directly), which its output keeps below OUT.
#[derive(Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub relative: PathBuf,
}

/// Files given as they are; directories searched recursively for images and videos
/// (other files there are skipped), in name order so runs are repeatable.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<InputFile>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = files.len();
            collect_media(input, input, &mut files)?;
            if files.len() == before {
                bail!("{}: no images or videos in this directory", input.display());
            }
        } else {
            let name = input
                .file_name()
                .with_context(|| format!("input {} has no file name", input.display()))?;
            files.push(InputFile {
                path: input.clone(),
                relative: PathBuf::from(name),
            });
        }
    }
    Ok(files)
}

fn collect_media(root: &Path, dir: &Path, files: &mut Vec<InputFile>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            // Our own temporary files, and dot-files in general, are not inputs.
            continue;
        } else if path.is_dir() {
            collect_media(root, &path, files)?;
        } else if crate::apply::media_kind(&path).is_ok() {
            let relative = path.strip_prefix(root).expect("below root").to_path_buf();
            files.push(InputFile { path, relative });
        }
    }
    Ok(())
}

/// The hidden name an output is written under until it is complete. It keeps the
/// extension, which picks the image encoder.
pub fn partial_path(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    let ext = crate::apply::extension(output);
    output.with_file_name(format!(".{name}.reggan-partial.{ext}"))
}

/// Runs every job not already done, `--jobs` at a time, and reports each. A failed file
/// does not stop the others; the run fails at the end, naming every failed file.
pub fn run(args: &ApplyArgs, jobs: &[Job]) -> Result<()> {
    for job in jobs {
        // Left by a run that was killed; never a finished output.
        let _ = std::fs::remove_file(partial_path(&job.output));
    }
    let todo: Vec<&Job> = jobs.iter().filter(|j| !j.done).collect();
    let skipped = jobs.len() - todo.len();
    if skipped > 0 {
        println!("--resume: {skipped} of {} outputs already done", jobs.len());
    }
    if todo.is_empty() {
        return Ok(());
    }
    let workers = args.batch.jobs.min(todo.len());
    let threads = threads_per_job(args.threads, workers);
    let progress = MultiProgress::new();
    let overall = (todo.len() > 1).then(|| progress.add(overall_bar(todo.len())));
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut processor = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = todo.get(i) else { break };
                    let result = process(args, job, threads, &mut processor, &progress)
                        .map_err(|e| failure_line(job, &e));
                    match result {
                        Ok(line) => progress.suspend(|| println!("{line}")),
                        Err(line) => {
                            // A single file's error is the run's error, printed once.
                            if todo.len() > 1 {
                                progress.suspend(|| eprintln!("error: {line}"));
                            }
                            failures.lock().unwrap().push(line);
                        }
                    }
                    if let Some(bar) = &overall {
                        bar.inc(1);
                    }
                }
            });
        }
    });
    if let Some(bar) = overall {
        bar.finish_and_clear();
    }
    let failures = failures.into_inner().unwrap();
    match failures.len() {
        0 => Ok(()),
        1 if todo.len() == 1 => bail!("{}", failures[0]),
        n => bail!(
            "{n} of {} files failed (the others are done; --resume retries only these):\n  {}",
            todo.len(),
            failures.join("\n  ")
        ),
    }
}

/// The error, naming the input when the error itself does not.
fn failure_line(job: &Job, error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    let input = job.input.display().to_string();
    if text.contains(&input) {
        text
    } else {
        format!("{input}: {text}")
    }
}

/// Writes the job under its temporary name, then renames it into place.
fn process(
    args: &ApplyArgs,
    job: &Job,
    threads: usize,
    processor: &mut Option<reggan::FrameProcessor>,
    progress: &MultiProgress,
) -> Result<String> {
    if let Some(parent) = job.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create output directory {}", parent.display()))?;
    }
    let partial = partial_path(&job.output);
    let result = crate::apply::apply_one(args, job, &partial, threads, processor, progress)
        .and_then(|line| {
            std::fs::rename(&partial, &job.output).with_context(|| {
                format!("cannot move the finished file to {}", job.output.display())
            })?;
            Ok(line)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// ONNX Runtime threads for each of `workers` files at once: as asked, or the CPU
/// cores shared out, so four jobs on eight cores do not each start eight threads.
fn threads_per_job(asked: usize, workers: usize) -> usize {
    match asked {
        0 => (crate::options::resolve_threads(0) / workers).max(1),
        n => n,
    }
}

fn overall_bar(files: usize) -> ProgressBar {
    let bar = ProgressBar::new(files as u64);
    bar.set_style(
        ProgressStyle::with_template("all files [{bar:40}] {pos}/{len} ({elapsed}, ~{eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
