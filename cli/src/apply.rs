//! `reggan apply`: images through the core `FrameProcessor`, videos through a GStreamer
//! pipeline with the `faceexpression` element.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gst::prelude::*;
use reggan::FrameProcessor;

use crate::gstutil;
use crate::options::{check_expression, ModelArgs};
use crate::photo::Photo;

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "ogv", "flv", "wmv",
];
/// Containers `apply` can write video into (H.264 in MP4/QuickTime or Matroska).
const VIDEO_OUTPUT_EXTENSIONS: &[&str] = &["mp4", "m4v", "mov", "mkv"];

/// Apply an expression to images and videos.
///
/// Images (png, jpg, ...) keep their format, channels (grey, alpha) and depth (16 bits);
/// one in which no face changed is copied byte for byte. Videos (mp4, mkv, webm, avi, mov, ...) are
/// decoded, changed frame by frame by the faceexpression GStreamer element and written
/// as H.264 (mp4 unless OUT says .mkv/.mov), keeping their timestamps (frame rate) and
/// their audio tracks as they are (not re-encoded). Every output is written under a
/// temporary name and renamed when complete, so an interrupted run leaves no partial
/// file under an output's name.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Image or video files, or directories (searched recursively; their tree is kept
    /// under OUT)
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output file; a directory when there are several inputs or a directory input
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Target expression (one of the model's: happy, sad, angry, disgusted, afraid, surprised, and neutral in models that have it)
    #[arg(short, long, default_value = "happy")]
    pub expression: String,
    /// 0 leaves the face unchanged, 1 is the model's expression, up to 2 exaggerates
    #[arg(short, long, default_value_t = 1.0, value_parser = parse_intensity)]
    pub intensity: f32,
    /// Write before | after next to each other
    #[arg(long)]
    pub side_by_side: bool,
    /// Replace OUT if it exists (inputs are never overwritten)
    #[arg(long)]
    pub force: bool,
    /// ONNX Runtime threads per file (0: the CPU cores shared out between --jobs)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub batch: crate::batch::BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub tracking: crate::options::TrackingArgs,
}

fn parse_intensity(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=2.0).contains(&v) {
        return Err(format!("{v} is outside 0..2"));
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

#[derive(Debug)]
pub struct Job {
    pub input: PathBuf,
    pub output: PathBuf,
    pub kind: MediaKind,
    /// `--resume` found this output finished by an earlier run.
    pub done: bool,
}

pub fn run(args: ApplyArgs) -> Result<()> {
    let manifest = args.model.manifest()?;
    check_expression(&manifest, &args.expression, &args.model.model_dir())?;
    let jobs = plan_jobs(&args)?;
    if jobs.iter().any(|j| j.kind == MediaKind::Video) {
        gstutil::init()?;
    }
    crate::batch::run(&args, &jobs)
}

/// Changes one image or video, writing `output` (a temporary name the batch renames).
/// `processor` is the worker's image processor, made on its first image.
pub fn apply_one(
    args: &ApplyArgs,
    job: &Job,
    output: &Path,
    threads: usize,
    processor: &mut Option<FrameProcessor>,
    progress: &indicatif::MultiProgress,
) -> Result<String> {
    match job.kind {
        MediaKind::Image => {
            if processor.is_none() {
                let config =
                    args.model
                        .processor_config(&args.expression, args.intensity, threads)?;
                *processor = Some(FrameProcessor::new(&args.model.model_dir(), config)?);
            }
            let processor = processor.as_mut().expect("made above");
            apply_image(processor, job, output, args.side_by_side)
        }
        MediaKind::Video => apply_video(args, job, output, threads, progress),
    }
}

pub fn media_kind(path: &Path) -> Result<MediaKind> {
    let ext = extension(path);
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        Ok(MediaKind::Image)
    } else if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        Ok(MediaKind::Video)
    } else {
        bail!(
            "{}: unsupported file type '.{ext}' (images: {}; videos: {})",
            path.display(),
            IMAGE_EXTENSIONS.join(", "),
            VIDEO_EXTENSIONS.join(", ")
        )
    }
}

pub fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Decides every output path and checks all of them before anything is written, so a
/// mistake in the last argument does not leave half the work done.
fn plan_jobs(args: &ApplyArgs) -> Result<Vec<Job>> {
    let files = crate::batch::expand_inputs(&args.inputs)?;
    let into_dir =
        files.len() > 1 || args.inputs.iter().any(|p| p.is_dir()) || args.output.is_dir();
    if into_dir {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create output directory {}", args.output.display()))?;
    }
    let inputs: Vec<PathBuf> = files
        .iter()
        .map(|f| canonical_input(&f.path))
        .collect::<Result<_>>()?;
    let mut seen = HashSet::new();
    let mut jobs = Vec::new();
    for (file, canonical) in files.iter().zip(&inputs) {
        let kind = media_kind(&file.path)?;
        // Below a directory OUT, subdirectories of the tree are made when their first
        // file is written, so the target is resolved from OUT itself.
        let (output, target) = if into_dir {
            let output = output_in_dir(&args.output, &file.relative, kind);
            let target = output_in_dir(&args.output.canonicalize()?, &file.relative, kind);
            (output, target)
        } else {
            (args.output.clone(), normalized_output(&args.output)?)
        };
        let done = check_output(
            &output,
            &target,
            kind,
            &inputs,
            args.force,
            args.batch.resume,
        )?;
        if !seen.insert(target) {
            bail!(
                "two inputs would both be written to {} (rename one)",
                output.display()
            );
        }
        jobs.push(Job {
            input: canonical.clone(),
            output,
            kind,
            done,
        });
    }
    Ok(jobs)
}

fn canonical_input(path: &Path) -> Result<PathBuf> {
    std::fs::File::open(path).with_context(|| format!("cannot read input {}", path.display()))?;
    if !path.is_file() {
        bail!("input {} is not a file", path.display());
    }
    Ok(path.canonicalize()?)
}

/// `relative` is the input's path below the directory given (its file name for a file
/// given directly).
fn output_in_dir(dir: &Path, relative: &Path, kind: MediaKind) -> PathBuf {
    match kind {
        MediaKind::Image => dir.join(relative),
        MediaKind::Video => dir.join(relative.with_extension("mp4")),
    }
}

/// The absolute path `output` will have (its directory resolved, links included), for
/// comparing with the inputs even when the file does not exist yet.
fn normalized_output(output: &Path) -> Result<PathBuf> {
    if let Ok(p) = output.canonicalize() {
        return Ok(p);
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("output directory {} does not exist", parent.display()))?;
    Ok(parent.join(output.file_name().unwrap_or_default()))
}

/// Ok(true) when `--resume` may skip the output because it exists (outputs are only
/// ever renamed into place complete).
/// `target` is `output` as an absolute path, links resolved.
fn check_output(
    output: &Path,
    target: &Path,
    kind: MediaKind,
    inputs: &[PathBuf],
    force: bool,
    resume: bool,
) -> Result<bool> {
    if inputs.iter().any(|i| i == target) {
        bail!(
            "refusing to overwrite input file {} (choose another -o)",
            output.display()
        );
    }
    let exists = output.exists();
    if exists && !force && !resume {
        bail!(
            "{} already exists; refusing to overwrite it without --force (or --resume to skip it)",
            output.display()
        );
    }
    let ext = extension(output);
    match kind {
        MediaKind::Image if !IMAGE_EXTENSIONS.contains(&ext.as_str()) => {
            bail!(
                "output {} needs an image extension ({})",
                output.display(),
                IMAGE_EXTENSIONS.join(", ")
            )
        }
        MediaKind::Video if !VIDEO_OUTPUT_EXTENSIONS.contains(&ext.as_str()) => {
            bail!(
                "output {} needs a video extension ({})",
                output.display(),
                VIDEO_OUTPUT_EXTENSIONS.join(", ")
            )
        }
        _ => Ok(exists && resume),
    }
}

fn apply_image(
    processor: &mut FrameProcessor,
    job: &Job,
    output: &Path,
    side_by_side: bool,
) -> Result<String> {
    let photo = Photo::load(&job.input)?;
    let mut after = photo.rgb.clone();
    let start = Instant::now();
    let report = processor
        .process(&mut after.as_frame())
        .with_context(|| format!("processing {}", job.input.display()))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    match side_by_side {
        true => photo.save_side_by_side(&after, output),
        false => photo.save(&after, &job.input, output),
    }
    .with_context(|| format!("cannot write {}", output.display()))?;
    let turned = report.edits.iter().filter(|e| e.strength == 0.0).count();
    let mut faces = match report.faces.len() - turned {
        0 if turned == 0 => "no face found, written unchanged".to_string(),
        1 => "1 face".to_string(),
        n => format!("{n} faces"),
    };
    if turned > 0 {
        faces += &format!(
            " changed, {turned} turned past --max-yaw left alone (yaw {})",
            report
                .edits
                .iter()
                .filter(|e| e.strength == 0.0)
                .map(|e| format!("{:.0}", e.pose.yaw))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(format!(
        "{} -> {}: {faces} ({} detected), {ms:.0} ms on {}",
        job.input.display(),
        job.output.display(),
        report.detected,
        processor.model().provider()
    ))
}

fn apply_video(
    args: &ApplyArgs,
    job: &Job,
    output: &Path,
    threads: usize,
    progress: &indicatif::MultiProgress,
) -> Result<String> {
    let pipeline = gstutil::launch(&crate::video::description(output, args.side_by_side))?;
    gstutil::by_name(&pipeline, "src")?
        .set_property("location", job.input.to_string_lossy().to_string());
    gstutil::by_name(&pipeline, "sink")?
        .set_property("location", output.to_string_lossy().to_string());
    crate::video::link_streams(&pipeline)?;
    let fx = gstutil::by_name(&pipeline, "fx")?;
    gstutil::configure(
        &fx,
        &args.model,
        &args.expression,
        args.intensity as f64,
        threads,
    );
    gstutil::configure_tracking(&fx, &args.tracking);
    if args.side_by_side {
        place_after_right_of_before(&pipeline)?;
    }
    let padded = crate::video::pad_to_even_sides(&pipeline)?;
    let frames = gstutil::count_buffers(&fx.static_pad("src").expect("element has a src pad"));

    let name = job
        .input
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let bar = progress.add(gstutil::time_bar(&name));
    let start = Instant::now();
    let result = gstutil::run_to_eos(&pipeline, |p| gstutil::follow_position(p, &bar));
    bar.finish_and_clear();
    progress.remove(&bar);
    result.with_context(|| format!("processing video {}", job.input.display()))?;
    if extension(output) != "mkv" {
        crate::video::clear_mp4_times(output)?;
    }
    let frames = frames.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let padded = match *padded.lock().expect("not poisoned") {
        Some((w, h)) => format!(", an odd side padded with black to {w}x{h} for H.264"),
        None => String::new(),
    };
    Ok(format!(
        "{} -> {}: {frames} frames in {secs:.1} s ({:.1} fps){padded}",
        job.input.display(),
        job.output.display(),
        frames as f64 / secs
    ))
}

/// Moves the compositor's second input (the changed video) right of the first as soon
/// as the decoded width is known, before the compositor picks its output size.
fn place_after_right_of_before(pipeline: &gst::Pipeline) -> Result<()> {
    let compositor = gstutil::by_name(pipeline, "comp")?;
    let decoded_src = gstutil::by_name(pipeline, "decoded")?
        .static_pad("src")
        .expect("capsfilter has a src pad");
    decoded_src.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ref event)) = info.data {
            if let gst::EventView::Caps(caps) = event.view() {
                let width = caps
                    .caps()
                    .structure(0)
                    .and_then(|s| s.get::<i32>("width").ok())
                    .unwrap_or(0);
                if let Some(pad) = compositor.static_pad("sink_1") {
                    pad.set_property("xpos", width);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}
