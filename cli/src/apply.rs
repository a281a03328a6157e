//! `reggan apply`: images through the core `FrameProcessor`, videos through a GStreamer
//! pipeline with the `faceexpression` element.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gst::prelude::*;
use reggan::{FrameProcessor, RgbImage};

use crate::gstutil;
use crate::images;
use crate::options::{check_expression, ModelArgs};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "ogv", "flv", "wmv",
];
/// Containers `apply` can write video into (H.264 in MP4/QuickTime or Matroska).
const VIDEO_OUTPUT_EXTENSIONS: &[&str] = &["mp4", "m4v", "mov", "mkv"];

/// Apply an expression to images and videos.
///
/// Images (png, jpg, ...) keep their format. Videos (mp4, mkv, webm, avi, mov, ...) are
/// decoded, changed frame by frame by the faceexpression GStreamer element and written
/// as H.264 (mp4 unless OUT says .mkv/.mov); their audio is dropped.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Image or video files
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output file; a directory when there are several inputs
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
    /// ONNX Runtime threads (0: one per CPU core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_intensity(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=2.0).contains(&v) {
        return Err(format!("{v} is outside 0..2"));
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaKind {
    Image,
    Video,
}

#[derive(Debug)]
struct Job {
    input: PathBuf,
    output: PathBuf,
    kind: MediaKind,
}

pub fn run(args: ApplyArgs) -> Result<()> {
    let manifest = args.model.manifest()?;
    check_expression(&manifest, &args.expression, &args.model.model_dir())?;
    let jobs = plan_jobs(&args)?;

    let image_jobs: Vec<&Job> = jobs.iter().filter(|j| j.kind == MediaKind::Image).collect();
    if !image_jobs.is_empty() {
        let threads = crate::options::resolve_threads(args.threads);
        let config = args
            .model
            .processor_config(&args.expression, args.intensity, threads)?;
        let mut processor = FrameProcessor::new(&args.model.model_dir(), config)?;
        for job in image_jobs {
            apply_image(&mut processor, job, args.side_by_side)?;
        }
    }
    let video_jobs: Vec<&Job> = jobs.iter().filter(|j| j.kind == MediaKind::Video).collect();
    if !video_jobs.is_empty() {
        gstutil::init()?;
        for job in video_jobs {
            apply_video(&args, job)?;
        }
    }
    Ok(())
}

fn media_kind(path: &Path) -> Result<MediaKind> {
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

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Decides every output path and checks all of them before anything is written, so a
/// mistake in the last argument does not leave half the work done.
fn plan_jobs(args: &ApplyArgs) -> Result<Vec<Job>> {
    let into_dir = args.inputs.len() > 1 || args.output.is_dir();
    if into_dir {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create output directory {}", args.output.display()))?;
    }
    let inputs: Vec<PathBuf> = args
        .inputs
        .iter()
        .map(|p| canonical_input(p))
        .collect::<Result<_>>()?;
    let mut seen = HashSet::new();
    let mut jobs = Vec::new();
    for (input, canonical) in args.inputs.iter().zip(&inputs) {
        let kind = media_kind(input)?;
        let output = if into_dir {
            output_in_dir(&args.output, input, kind)
        } else {
            args.output.clone()
        };
        check_output(&output, kind, &inputs, args.force)?;
        if !seen.insert(normalized_output(&output)?) {
            bail!(
                "two inputs would both be written to {} (rename one)",
                output.display()
            );
        }
        jobs.push(Job {
            input: canonical.clone(),
            output,
            kind,
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

fn output_in_dir(dir: &Path, input: &Path, kind: MediaKind) -> PathBuf {
    let name = input.file_name().expect("an input file has a name");
    match kind {
        MediaKind::Image => dir.join(name),
        MediaKind::Video => dir.join(Path::new(name).with_extension("mp4")),
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

fn check_output(output: &Path, kind: MediaKind, inputs: &[PathBuf], force: bool) -> Result<()> {
    let target = normalized_output(output)?;
    if inputs.contains(&target) {
        bail!(
            "refusing to overwrite input file {} (choose another -o)",
            output.display()
        );
    }
    if output.exists() && !force {
        bail!(
            "{} already exists; refusing to overwrite it without --force",
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
        _ => Ok(()),
    }
}

fn apply_image(processor: &mut FrameProcessor, job: &Job, side_by_side: bool) -> Result<()> {
    // The core error already names the file; map it to text so its source is not repeated.
    let before =
        RgbImage::load(&job.input).map_err(|e| anyhow::anyhow!("cannot read image {e}"))?;
    let mut after = before.clone();
    let start = Instant::now();
    let report = processor
        .process(&mut after.as_frame())
        .with_context(|| format!("processing {}", job.input.display()))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let result = if side_by_side {
        images::hconcat(&[&before, &after])
    } else {
        after
    };
    result
        .save(&job.output)
        .with_context(|| format!("cannot write {}", job.output.display()))?;
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
    println!(
        "{} -> {}: {faces} ({} detected), {ms:.0} ms on {}",
        job.input.display(),
        job.output.display(),
        report.detected,
        processor.model().provider()
    );
    Ok(())
}

fn apply_video(args: &ApplyArgs, job: &Job) -> Result<()> {
    let pipeline = gstutil::launch(&video_pipeline(&job.output, args.side_by_side))?;
    gstutil::by_name(&pipeline, "src")?
        .set_property("location", job.input.to_string_lossy().to_string());
    gstutil::by_name(&pipeline, "sink")?
        .set_property("location", job.output.to_string_lossy().to_string());
    let fx = gstutil::by_name(&pipeline, "fx")?;
    gstutil::configure(
        &fx,
        &args.model,
        &args.expression,
        args.intensity as f64,
        args.threads,
    );
    if args.side_by_side {
        place_after_right_of_before(&pipeline)?;
    }
    let frames = gstutil::count_buffers(&fx.static_pad("src").expect("element has a src pad"));

    let name = job
        .input
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let bar = gstutil::time_bar(&name);
    let start = Instant::now();
    let result = gstutil::run_to_eos(&pipeline, |p| gstutil::follow_position(p, &bar));
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&job.output);
        return Err(e.context(format!("processing video {}", job.input.display())));
    }
    let frames = frames.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} -> {}: {frames} frames in {secs:.1} s ({:.1} fps)",
        job.input.display(),
        job.output.display(),
        frames as f64 / secs
    );
    Ok(())
}

/// decode -> RGB -> faceexpression -> H.264. I420 is forced before x264enc because from
/// RGB it would otherwise pick 4:4:4, which most players cannot decode.
fn video_pipeline(output: &Path, side_by_side: bool) -> String {
    let mux = if extension(output) == "mkv" {
        "matroskamux"
    } else {
        "mp4mux"
    };
    let encode = format!(
        "videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=faster pass=qual quantizer=20 ! {mux} ! filesink name=sink"
    );
    let decode = "filesrc name=src ! decodebin ! videoconvert ! capsfilter name=rgb caps=video/x-raw,format=RGB";
    if side_by_side {
        format!(
            "{decode} ! tee name=t \
             t. ! queue ! comp.sink_0 \
             t. ! queue ! faceexpression name=fx ! comp.sink_1 \
             compositor name=comp ! {encode}"
        )
    } else {
        format!("{decode} ! faceexpression name=fx ! {encode}")
    }
}

/// Moves the compositor's second input (the changed video) right of the first as soon
/// as the decoded width is known, before the compositor picks its output size.
fn place_after_right_of_before(pipeline: &gst::Pipeline) -> Result<()> {
    let compositor = gstutil::by_name(pipeline, "comp")?;
    let rgb_src = gstutil::by_name(pipeline, "rgb")?
        .static_pad("src")
        .expect("capsfilter has a src pad");
    rgb_src.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
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
