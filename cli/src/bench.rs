//! `reggan bench`: per-stage times and frames per second of the core processor and of
//! the GStreamer element (mean and 95th percentile of its frame interval), on the demo
//! face (one, or four in a 2x2 mosaic) in 640x480, 1280x720 and 1920x1080 frames, through
//! the video path (tracking, as the element runs it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use gst::prelude::*;
use opencv::prelude::*;
use reggan::detect::SearchPass;
use reggan::{FrameProcessor, FrameReport, RgbImage, StageTimings};
use serde_json::json;

use crate::gstutil;
use crate::images;
use crate::options::{load_photo, ModelArgs};

const SIZES: [(usize, usize); 3] = [(640, 480), (1280, 720), (1920, 1080)];
/// Frames run before timing starts (session warm-up, allocator, caches).
const WARMUP: usize = 5;

/// Measure per-stage times and fps of the core processor and of the element in a pipeline
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Frames timed per measurement
    #[arg(long, default_value_t = 200)]
    pub frames: usize,
    /// Threads for ONNX Runtime and OpenCV
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Photo with one face [default: $REGGAN_DEMO_IMAGE, else the neutral London Set face in assets/]
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Also write the results as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only the core processor (no GStreamer pipeline)
    #[arg(long)]
    pub core_only: bool,
    #[arg(long, default_value = "happy")]
    pub expression: String,
    /// Full-frame face search every N frames, tracking in between (1 = both detection
    /// models on every frame; the default is the element's)
    #[arg(long, default_value_t = reggan::processor::DEFAULT_DETECT_INTERVAL)]
    pub detect_interval: u32,
    /// Pixel format fed to the element: rgb, or i420 (a decoder's or camera's, which
    /// the element converts itself and writes back only at the faces)
    #[arg(long, default_value = "rgb", value_parser = ["rgb", "i420"])]
    pub format: String,
    /// Faces in the frame: 1, or 4 (the photo in a 2x2 mosaic)
    #[arg(long, default_value_t = 1, value_parser = parse_faces)]
    pub faces: usize,
    /// The picture around the faces: still (a webcam call), or moving (a block moves in
    /// the frame's border every frame, as a moving camera or a busy background would, so
    /// every due whole-frame search for new faces runs)
    #[arg(long, default_value = "still", value_parser = ["still", "moving"])]
    pub scene: String,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_faces(s: &str) -> std::result::Result<usize, String> {
    match s {
        "1" => Ok(1),
        "4" => Ok(4),
        _ => Err(format!("'{s}': 1 or 4 faces")),
    }
}

/// Mean and 95th percentile of one stage, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Stat {
    mean: f64,
    p95: f64,
}

impl Stat {
    fn of(samples: &[Duration]) -> Stat {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        let p95 = ms
            .get(((ms.len() as f64 * 0.95).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0);
        Stat { mean, p95 }
    }

    fn json(&self) -> serde_json::Value {
        json!({ "mean_ms": round2(self.mean), "p95_ms": round2(self.p95) })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

struct CoreResult {
    stages: [Stat; 4],
    total: Stat,
    fps: f64,
    faces: usize,
    /// Share of the timed frames on which a whole-frame search ran.
    searched: f64,
    /// The detect stage by what the detector did on the frame.
    detect_by_path: Vec<PathStat>,
}

/// What the detect stage did on one frame of video, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DetectPath {
    /// Optical flow carried every followed face; the detector did not run.
    FlowOnly,
    /// The detector looked for followed faces around where they were.
    Looks,
    /// The whole frame was searched with the front model (large faces).
    FrontPass,
    /// ... with the back model (small faces).
    BackPass,
    /// ... with both.
    BothPasses,
}

impl DetectPath {
    const ALL: [DetectPath; 5] = [
        DetectPath::FlowOnly,
        DetectPath::Looks,
        DetectPath::FrontPass,
        DetectPath::BackPass,
        DetectPath::BothPasses,
    ];

    fn of(report: &FrameReport) -> Self {
        match report.whole_frame_search {
            Some(SearchPass::Large) => DetectPath::FrontPass,
            Some(SearchPass::Small) => DetectPath::BackPass,
            Some(SearchPass::All) => DetectPath::BothPasses,
            None if report.faces_looked_for > 0 => DetectPath::Looks,
            None => DetectPath::FlowOnly,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DetectPath::FlowOnly => "optical flow only",
            DetectPath::Looks => "+ looks near faces",
            DetectPath::FrontPass => "+ front pass",
            DetectPath::BackPass => "+ back pass",
            DetectPath::BothPasses => "+ both passes",
        }
    }

    fn key(self) -> &'static str {
        match self {
            DetectPath::FlowOnly => "flow_only",
            DetectPath::Looks => "looks",
            DetectPath::FrontPass => "front_pass",
            DetectPath::BackPass => "back_pass",
            DetectPath::BothPasses => "both_passes",
        }
    }
}

/// The detect stage's mean time on the frames of one path, and their share.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PathStat {
    path: DetectPath,
    mean_ms: f64,
    share: f64,
}

/// Groups frames' detect times by path (only the paths that occurred, cheapest first).
fn detect_by_path(frames: &[(DetectPath, Duration)]) -> Vec<PathStat> {
    DetectPath::ALL
        .iter()
        .filter_map(|&path| {
            let times: Vec<Duration> = frames
                .iter()
                .filter(|(p, _)| *p == path)
                .map(|&(_, t)| t)
                .collect();
            (!times.is_empty()).then(|| PathStat {
                path,
                mean_ms: Stat::of(&times).mean,
                share: times.len() as f64 / frames.len() as f64,
            })
        })
        .collect()
}

const STAGE_NAMES: [&str; 4] = ["detect", "align", "model", "composite"];

pub fn run(args: BenchArgs) -> Result<()> {
    args.model.manifest()?;
    opencv::core::set_num_threads(args.threads as i32)?;
    let photo = load_photo(args.image.as_deref())?;
    let config = args
        .model
        .processor_config(&args.expression, 1.0, args.threads)?;
    let mut processor = FrameProcessor::new(&args.model.model_dir(), config)?;
    processor.set_detect_interval(args.detect_interval);
    let provider = processor.model().provider();
    let method = processor.model().manifest().method.clone();
    println!(
        "reggan bench: model {} ({method}) on {provider}, {} thread(s), {} frames per row, {} face(s), detect-interval {}, {} scene, element fed {}",
        args.model.model_dir().display(),
        args.threads,
        args.frames,
        args.faces,
        args.detect_interval,
        args.scene,
        args.format.to_uppercase()
    );
    let moving = args.scene == "moving";
    let photo = if args.faces == 4 {
        mosaic(&photo)?
    } else {
        photo
    };

    let mut rows = Vec::new();
    for (w, h) in SIZES {
        let frame = images::letterbox(&photo, w, h)?;
        processor.reset_tracking();
        let core = bench_core(&mut processor, &frame, args.frames, moving)?;
        if core.faces != args.faces {
            bail!(
                "{} faces found in the {w}x{h} bench frame, not {}",
                core.faces,
                args.faces
            );
        }
        let element = if args.core_only {
            None
        } else {
            Some(bench_element(&args, &frame)?)
        };
        rows.push(((w, h), core, element));
    }
    print_table(&rows);
    if let Some(path) = &args.json {
        let value = to_json(&args, provider, &method, &rows);
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("json: {}", path.display());
    }
    Ok(())
}

/// The processor alone on fresh copies of one frame (with a block moving in its
/// border when `moving`); copying is not timed.
fn bench_core(
    processor: &mut FrameProcessor,
    frame: &RgbImage,
    frames: usize,
    moving: bool,
) -> Result<CoreResult> {
    let mut work = frame.clone();
    // The video path, as the element runs it: 25 frames a second of stream time.
    let at = |i: usize| Duration::from_millis(40 * i as u64);
    let fresh = |work: &mut RgbImage, i: usize| {
        work.data.copy_from_slice(&frame.data);
        if moving {
            paint_motion(&mut work.data, frame.width, frame.height, 3, i);
        }
    };
    for i in 0..WARMUP {
        fresh(&mut work, i);
        processor.process_video(&mut work.as_frame(), at(i))?;
    }
    let mut timings: Vec<StageTimings> = Vec::with_capacity(frames);
    let mut totals = Vec::with_capacity(frames);
    let mut faces = 0;
    let mut searched = 0;
    let mut paths = Vec::with_capacity(frames);
    for i in WARMUP..WARMUP + frames {
        fresh(&mut work, i);
        let start = Instant::now();
        let report = processor.process_video(&mut work.as_frame(), at(i))?;
        totals.push(start.elapsed());
        timings.push(report.timings);
        faces = faces.max(report.faces.len());
        searched += usize::from(report.whole_frame_search.is_some());
        paths.push((DetectPath::of(&report), report.timings.detect));
    }
    let stage = |pick: fn(&StageTimings) -> Duration| {
        Stat::of(&timings.iter().map(pick).collect::<Vec<_>>())
    };
    let wall: Duration = totals.iter().sum();
    Ok(CoreResult {
        stages: [
            stage(|t| t.detect),
            stage(|t| t.align),
            stage(|t| t.model),
            stage(|t| t.composite),
        ],
        total: Stat::of(&totals),
        fps: frames as f64 / wall.as_secs_f64(),
        faces,
        searched: searched as f64 / frames.max(1) as f64,
        detect_by_path: detect_by_path(&paths),
    })
}

/// Paints a 48 px white block into the frame's left border (the bench frame letterboxes
/// the photo, so the border holds no face) at a height that changes with frame `i`.
/// `data` is packed with `bytes_per_pixel` (3: RGB; 1: the luma plane that starts an
/// I420 frame).
fn paint_motion(data: &mut [u8], width: usize, height: usize, bytes_per_pixel: usize, i: usize) {
    const SIDE: usize = 48;
    let (x0, y0) = (8, (i * 16) % height.saturating_sub(SIDE).max(1));
    let stride = width * bytes_per_pixel;
    for y in y0..(y0 + SIDE).min(height) {
        let row = &mut data[y * stride..(y + 1) * stride];
        row[x0 * bytes_per_pixel..(x0 + SIDE).min(width) * bytes_per_pixel].fill(255);
    }
}

/// The photo four times, in a 2x2 mosaic of the same size.
fn mosaic(photo: &RgbImage) -> Result<RgbImage> {
    let (w, h) = (photo.width / 2, photo.height / 2);
    let small = images::resize(photo, w, h)?;
    let mut out = RgbImage {
        width: 2 * w,
        height: 2 * h,
        data: vec![96; 4 * w * h * 3],
    };
    for (x, y) in [(0, 0), (w, 0), (0, h), (w, h)] {
        images::paste(&mut out, &small, x, y);
    }
    Ok(out)
}

/// What the element in a pipeline achieved.
#[derive(Debug, Clone, Copy)]
struct ElementResult {
    fps: f64,
    /// Interval between frames reaching the sink.
    interval: Stat,
}

/// appsrc ! faceexpression ! fakesink sync=false. Frames per second are counted between
/// the first and the last frame reaching the sink, so model loading is not included.
fn bench_element(args: &BenchArgs, frame: &RgbImage) -> Result<ElementResult> {
    gstutil::init()?;
    let data = match args.format.as_str() {
        "i420" => to_i420(frame)?,
        _ => frame.data.clone(),
    };
    let pipeline = gstutil::launch(&format!(
        "appsrc name=src format=time block=true max-bytes={} caps=video/x-raw,format={},width={},height={},framerate=25/1 \
         ! faceexpression name=fx ! fakesink name=sink sync=false",
        4 * data.len(),
        args.format.to_uppercase(),
        frame.width,
        frame.height
    ))?;
    let fx = gstutil::by_name(&pipeline, "fx")?;
    gstutil::configure(&fx, &args.model, &args.expression, 1.0, args.threads);
    fx.set_property("detect-interval", args.detect_interval);
    let arrivals = record_arrivals(&gstutil::by_name(&pipeline, "sink")?);
    let appsrc = gstutil::by_name(&pipeline, "src")?
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc is an AppSrc");
    let total = (WARMUP + args.frames) as u64;
    let (moving, width, height) = (args.scene == "moving", frame.width, frame.height);
    // I420's luma plane comes first, one byte a pixel.
    let bytes_per_pixel = if args.format == "i420" { 1 } else { 3 };
    // Frames come from a pool of reused buffers, as from a camera or a decoder: a fresh
    // allocation per frame would time the kernel's page faults, not the element.
    let pool = frame_pool(data.len())?;
    let feeder = std::thread::spawn(move || {
        let frame_duration = gst::ClockTime::from_nseconds(40_000_000);
        for i in 0..total {
            let Ok(mut buffer) = pool.acquire_buffer(None) else {
                return;
            };
            {
                let buffer = buffer.get_mut().expect("a pooled buffer is writable");
                if let Ok(mut map) = buffer.map_writable() {
                    map.copy_from_slice(&data);
                    if moving {
                        paint_motion(&mut map, width, height, bytes_per_pixel, i as usize);
                    }
                }
                buffer.set_pts(frame_duration * i);
            }
            if appsrc.push_buffer(buffer).is_err() {
                return;
            }
        }
        let _ = appsrc.end_of_stream();
        let _ = pool.set_active(false);
    });
    let result = gstutil::run_to_eos(&pipeline, |_| {});
    feeder.join().expect("feeder does not panic");
    result.context("running the element benchmark pipeline")?;
    let arrivals = arrivals.lock().expect("not poisoned");
    let timed = &arrivals[WARMUP.min(arrivals.len())..];
    match (timed.first(), timed.last()) {
        (Some(first), Some(last)) if timed.len() > 1 => {
            let intervals: Vec<Duration> = timed
                .windows(2)
                .map(|w| w[1].duration_since(w[0]))
                .collect();
            Ok(ElementResult {
                fps: (timed.len() - 1) as f64 / last.duration_since(*first).as_secs_f64(),
                interval: Stat::of(&intervals),
            })
        }
        _ => bail!(
            "the element pipeline delivered only {} frames",
            arrivals.len()
        ),
    }
}

/// `frame` as I420 (OpenCV's BT.601 conversion; planes packed one after the other, as
/// GStreamer lays out the bench's sizes, whose half widths are multiples of 4).
fn to_i420(frame: &RgbImage) -> Result<Vec<u8>> {
    let (w, h) = (frame.width, frame.height);
    if w % 8 != 0 || h % 2 != 0 {
        bail!("an I420 bench frame needs a width divisible by 8 and an even height, not {w}x{h}");
    }
    let rgb = opencv::core::Mat::new_rows_cols_with_data(h as i32, (w * 3) as i32, &frame.data)?
        .reshape(3, h as i32)?
        .try_clone()?;
    let mut i420 = opencv::core::Mat::default();
    opencv::imgproc::cvt_color_def(&rgb, &mut i420, opencv::imgproc::COLOR_RGB2YUV_I420)?;
    Ok(i420.data_bytes()?.to_vec())
}

/// An active pool of buffers of `size` bytes (enough for the pipeline's queue).
fn frame_pool(size: usize) -> Result<gst::BufferPool> {
    let pool = gst::BufferPool::new();
    let mut config = pool.config();
    config.set_params(None, size as u32, 8, 0);
    pool.set_config(config)
        .context("configuring the frame pool")?;
    pool.set_active(true).context("starting the frame pool")?;
    Ok(pool)
}

fn record_arrivals(sink: &gst::Element) -> Arc<Mutex<Vec<Instant>>> {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let record = arrivals.clone();
    sink.static_pad("sink")
        .expect("fakesink has a sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            record.lock().expect("not poisoned").push(Instant::now());
            gst::PadProbeReturn::Ok
        });
    arrivals
}

type Row = ((usize, usize), CoreResult, Option<ElementResult>);

fn print_table(rows: &[Row]) {
    let mut header = format!("{:<10} {:<8}", "frame", "path");
    for name in STAGE_NAMES.iter().chain(["total"].iter()) {
        header += &format!(" {:>17}", format!("{name} mean/p95"));
    }
    header += &format!(" {:>8} {:>8}", "fps", "searched");
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for ((w, h), core, element) in rows {
        let size = format!("{w}x{h}");
        let mut line = format!("{size:<10} {:<8}", "core");
        for stat in core.stages.iter().chain(std::iter::once(&core.total)) {
            line += &format!(" {:>17}", format!("{:.1}/{:.1} ms", stat.mean, stat.p95));
        }
        println!("{line} {:>8.1} {:>7.0}%", core.fps, 100.0 * core.searched);
        if let Some(e) = element {
            // The element's stages run inside the pipeline; its frame interval is measured
            // at the sink.
            let mut line = format!("{size:<10} {:<8}", "element");
            for _ in 0..STAGE_NAMES.len() {
                line += &format!(" {:>17}", "-");
            }
            let total = format!("{:.1}/{:.1} ms", e.interval.mean, e.interval.p95);
            println!("{line} {total:>17} {:>8.1}", e.fps);
        }
    }
    println!(
        "\ndetect stage by what the detector did (core; mean ms on such frames, share of frames):"
    );
    for ((w, h), core, _) in rows {
        let paths: Vec<String> = core
            .detect_by_path
            .iter()
            .map(|p| {
                format!(
                    "{} {:.2} ms ({:.0}%)",
                    p.path.name(),
                    p.mean_ms,
                    100.0 * p.share
                )
            })
            .collect();
        println!("{:<10} {}", format!("{w}x{h}"), paths.join(", "));
    }
}

fn to_json(args: &BenchArgs, provider: &str, method: &str, rows: &[Row]) -> serde_json::Value {
    let rows: Vec<_> = rows
        .iter()
        .map(|((w, h), core, element)| {
            let mut stages = serde_json::Map::new();
            for (name, stat) in STAGE_NAMES.iter().zip(&core.stages) {
                stages.insert(name.to_string(), stat.json());
            }
            stages.insert("total".into(), core.total.json());
            json!({
                "width": w, "height": h,
                "core": {
                    "stages": stages, "fps": round2(core.fps),
                    "whole_frame_search_share": round2(core.searched),
                    "detect_by_path": core.detect_by_path.iter().map(|p| (p.path.key().to_string(), json!({
                        "mean_ms": round2(p.mean_ms), "share": round2(p.share),
                    }))).collect::<serde_json::Map<_, _>>(),
                },
                "element": element.map(|e| json!({ "fps": round2(e.fps), "interval": e.interval.json() })),
            })
        })
        .collect();
    json!({
        "model": args.model.model_dir(), "method": method, "provider": provider,
        "threads": args.threads, "frames": args.frames, "faces": args.faces,
        "detect_interval": args.detect_interval, "scene": args.scene,
        "element_format": args.format, "results": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_times_are_grouped_by_path_cheapest_first() {
        let ms = Duration::from_millis;
        let frames = [
            (DetectPath::Looks, ms(2)),
            (DetectPath::FlowOnly, ms(1)),
            (DetectPath::BackPass, ms(9)),
            (DetectPath::Looks, ms(4)),
        ];
        let stats = detect_by_path(&frames);
        let got: Vec<(DetectPath, f64, f64)> =
            stats.iter().map(|p| (p.path, p.mean_ms, p.share)).collect();
        assert_eq!(
            got,
            [
                (DetectPath::FlowOnly, 1.0, 0.25),
                (DetectPath::Looks, 3.0, 0.5),
                (DetectPath::BackPass, 9.0, 0.25),
            ]
        );
    }

    #[test]
    fn stat_mean_and_p95() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let stat = Stat::of(&samples);
        assert!((stat.mean - 50.5).abs() < 1e-9);
        assert!((stat.p95 - 95.0).abs() < 1e-9);
    }
}
