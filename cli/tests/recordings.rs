//! `reggan apply` on recordings: the audio track comes out as it went in (same codec,
//! same bytes, same duration), the faces change, directories keep their tree, and a
//! batch killed halfway then `--resume`d gives the same bytes as an uninterrupted run.
//!
//! Clips are made here from the committed demo face (assets/) with GStreamer; tests
//! print "SKIPPED: ..." when the model, the face or a GStreamer element is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{reggan, run_pipeline, scratch};
use gst::prelude::*;
use reggan::{DetectorKind, FaceDetector, RgbImage};

const SIZE: usize = 320;
const FPS: u32 = 25;

fn check(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The committed face and a GStreamer with the encoders the clips need, or None.
fn fixtures(test: &str) -> Option<PathBuf> {
    let face = reggan::install::demo_face();
    let model = reggan::default_model_dir();
    let missing = if !model.join("model.json").is_file() {
        Some(format!("no model at {}", model.display()))
    } else if !face.is_file() {
        Some(format!("no demo face at {}", face.display()))
    } else {
        gst::init().unwrap();
        ["x264enc", "avenc_aac", "mp4mux", "parsebin"]
            .into_iter()
            .find(|f| gst::ElementFactory::find(f).is_none())
            .map(|f| format!("GStreamer element {f} missing (scripts/setup.sh installs it)"))
    };
    match missing {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
        None => Some(face),
    }
}

/// `frames` frames of the face (H.264) and, when `tone` is given, a sine of that many
/// Hz as AAC, in MP4.
fn make_clip(face: &Path, path: &Path, frames: u32, tone: Option<f64>) {
    let audio = tone.map_or(String::new(), |hz| {
        let samples = 44100 * frames as u64 / FPS as u64;
        format!(
            "audiotestsrc freq={hz} num-buffers={} samplesperbuffer=1024 ! \
             audio/x-raw,rate=44100,channels=1 ! audioconvert ! avenc_aac ! mux.",
            samples.div_ceil(1024)
        )
    });
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! jpegdec ! videoconvert ! videoscale ! \
         video/x-raw,width={SIZE},height={SIZE} ! imagefreeze num-buffers={frames} ! \
         video/x-raw,framerate={FPS}/1 ! videoconvert ! video/x-raw,format=I420 ! x264enc ! mux. \
         {audio} mp4mux name=mux ! filesink location=\"{}\"",
        face.display(),
        path.display()
    ))
    .unwrap();
    run_pipeline(&pipeline);
}

/// One elementary stream of a file as the demuxer gives it, before any decoding.
#[derive(Debug, Default, Clone)]
struct Stream {
    caps: String,
    bytes: Vec<u8>,
    buffers: usize,
    /// End of the last buffer (pts + duration), in nanoseconds.
    end: u64,
}

fn streams(path: &Path) -> Vec<Stream> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_str().unwrap())
        .build()
        .unwrap();
    let parse = gst::ElementFactory::make("parsebin").build().unwrap();
    pipeline.add_many([&src, &parse]).unwrap();
    src.link(&parse).unwrap();
    let found: Arc<Mutex<Vec<Arc<Mutex<Stream>>>>> = Arc::default();
    let all = found.clone();
    let weak = pipeline.downgrade();
    parse.connect_pad_added(move |_, pad| {
        let pipeline = weak.upgrade().unwrap();
        // Not async: one demuxer thread feeds every stream, so a sink that waited for
        // its first buffer to preroll would block the others.
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        let caps = pad.current_caps().unwrap().structure(0).unwrap().to_owned();
        // codec_data and the like differ between muxers; name and format are the codec.
        let stream = Arc::new(Mutex::new(Stream {
            caps: caps.name().to_string()
                + &["mpegversion", "stream-format", "channels", "rate"]
                    .iter()
                    .filter_map(|f| caps.value(*f).ok().map(|v| format!(",{f}={v:?}")))
                    .collect::<String>(),
            ..Default::default()
        }));
        all.lock().unwrap().push(stream.clone());
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                let mut s = stream.lock().unwrap();
                s.buffers += 1;
                s.bytes.extend_from_slice(&buffer.map_readable().unwrap());
                if let (Some(pts), Some(d)) = (buffer.pts(), buffer.duration()) {
                    s.end = s.end.max((pts + d).nseconds());
                }
            }
            gst::PadProbeReturn::Ok
        });
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    run_pipeline(pipeline.upcast_ref());
    let found = found.lock().unwrap();
    found.iter().map(|s| s.lock().unwrap().clone()).collect()
}

/// Frame `index` of a video, decoded to RGB, and the frame rate of its caps.
fn frame(path: &Path, index: usize) -> (RgbImage, gst::Fraction) {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! \
         fakesink name=sink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let seen: Arc<Mutex<(usize, Option<RgbImage>, gst::Fraction)>> =
        Arc::new(Mutex::new((0, None, gst::Fraction::new(0, 1))));
    let record = seen.clone();
    let pad = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let mut seen = record.lock().unwrap();
        if seen.0 == index {
            let caps = pad.current_caps().unwrap();
            let s = caps.structure(0).unwrap();
            let (w, h) = (
                s.get::<i32>("width").unwrap() as usize,
                s.get::<i32>("height").unwrap() as usize,
            );
            seen.2 = s.get::<gst::Fraction>("framerate").unwrap();
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                let map = buffer.map_readable().unwrap();
                let stride = map.len() / h;
                let mut image = RgbImage::new(w, h);
                for y in 0..h {
                    image.data[y * w * 3..(y + 1) * w * 3]
                        .copy_from_slice(&map[y * stride..y * stride + w * 3]);
                }
                seen.1 = Some(image);
            }
        }
        seen.0 += 1;
        gst::PadProbeReturn::Ok
    });
    run_pipeline(pipeline.upcast_ref());
    let mut seen = seen.lock().unwrap();
    let rate = seen.2;
    (seen.1.take().expect("the video has that frame"), rate)
}

/// Mean absolute difference of two images over a rectangle.
fn mean_diff(a: &RgbImage, b: &RgbImage, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> f64 {
    let mut sum = 0u64;
    for y in y0..y1 {
        for x in x0..x1 {
            let (p, q) = (a.pixel(x, y), b.pixel(x, y));
            sum += (0..3).map(|c| p[c].abs_diff(q[c]) as u64).sum::<u64>();
        }
    }
    sum as f64 / ((x1 - x0) * (y1 - y0) * 3) as f64
}

#[test]
fn audio_passes_through_unchanged_and_faces_change() {
    let Some(face) = fixtures("audio_passes_through_unchanged_and_faces_change") else {
        return;
    };
    let dir = scratch("audio");
    let input = dir.join("talk.mp4");
    let output = dir.join("talk-happy.mp4");
    make_clip(&face, &input, 50, Some(440.0));
    check(
        "apply",
        &reggan(&[
            "apply",
            input.to_str().unwrap(),
            "-e",
            "happy",
            "-o",
            output.to_str().unwrap(),
        ]),
    );

    let (before, after) = (streams(&input), streams(&output));
    let audio = |s: &[Stream]| {
        s.iter()
            .find(|s| s.caps.starts_with("audio/"))
            .cloned()
            .expect("an audio stream")
    };
    let (a_in, a_out) = (audio(&before), audio(&after));
    assert_eq!(a_in.caps, a_out.caps, "audio codec changed");
    assert_eq!(a_in.buffers, a_out.buffers, "audio packets lost or added");
    assert!(
        a_in.bytes == a_out.bytes,
        "audio bytes differ: re-encoded? ({} vs {} bytes)",
        a_in.bytes.len(),
        a_out.bytes.len()
    );
    let frame_ns = 1_000_000_000 / FPS as u64;
    assert!(
        a_in.end.abs_diff(a_out.end) <= frame_ns,
        "audio ends at {} ns, was {} ns",
        a_out.end,
        a_in.end
    );
    assert_eq!(after.len(), 2, "one video and one audio stream: {after:?}");

    let (still_in, rate_in) = frame(&input, 25);
    let (still_out, rate_out) = frame(&output, 25);
    assert_eq!(rate_in, rate_out, "frame rate changed");
    let mut detector = FaceDetector::new(DetectorKind::Auto).unwrap();
    let faces = detector.detect(&still_in.clone().as_frame(), 32.0).unwrap();
    assert_eq!(faces.len(), 1);
    let b = faces[0].bbox;
    let mouth = (
        (b.x + 0.25 * b.w) as usize,
        (b.y + 0.6 * b.h) as usize,
        (b.x + 0.75 * b.w) as usize,
        ((b.y + b.h) as usize).min(SIZE),
    );
    let corner = (0, 0, 40, 40);
    let (changed, background) = (
        mean_diff(&still_in, &still_out, mouth),
        mean_diff(&still_in, &still_out, corner),
    );
    // Re-encoding alone moves a flat background by about 3.4 levels at x264's
    // quantizer 20 (measured without the element); the mouth must change well beyond.
    assert!(
        changed > background + 5.0,
        "mouth changed by {changed:.2} levels, background by {background:.2}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every file below `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    files
}

#[test]
fn killed_batch_resumes_to_the_same_bytes_and_keeps_the_tree() {
    let Some(face) = fixtures("killed_batch_resumes_to_the_same_bytes_and_keeps_the_tree") else {
        return;
    };
    let dir = scratch("resume");
    let clips = dir.join("clips");
    std::fs::create_dir_all(clips.join("day2/take1")).unwrap();
    let names = [
        "a.mp4",
        "b.mp4",
        "day2/c.mp4",
        "day2/take1/d.mp4",
        "day2/take1/e.mp4",
    ];
    for (i, name) in names.iter().enumerate() {
        make_clip(&face, &clips.join(name), 30, Some(300.0 + 100.0 * i as f64));
    }
    std::fs::write(clips.join("day2/notes.txt"), "not a video\n").unwrap();
    let expected: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
    let args = |out: &Path| {
        vec![
            "apply".to_string(),
            clips.to_str().unwrap().into(),
            "-e".into(),
            "surprised".into(),
            "--threads".into(),
            "1".into(),
            "--jobs".into(),
            "2".into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ]
    };

    let whole = dir.join("whole");
    let a = args(&whole);
    check(
        "uninterrupted batch",
        &reggan(&a.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    assert_eq!(tree(&whole), expected, "the tree is not kept");

    // Kill the same batch as soon as its first output is in place.
    let resumed = dir.join("resumed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_reggan"))
        .args(args(&resumed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let finished = |d: &Path| {
        tree(d)
            .into_iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect::<Vec<_>>()
    };
    while finished(&resumed).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no output appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = finished(&resumed);
    assert!(
        done.len() < names.len(),
        "the batch finished before it could be killed: {done:?}"
    );
    for name in &done {
        // Under an output's name there is only ever a finished file.
        assert!(
            std::fs::read(resumed.join(name)).unwrap() == std::fs::read(whole.join(name)).unwrap(),
            "{} is not the finished output after the kill",
            name.display()
        );
    }

    let r = args(&resumed);
    let mut r: Vec<&str> = r.iter().map(String::as_str).collect();
    r.push("--resume");
    let said = check("--resume", &reggan(&r));
    assert!(
        said.contains(&format!(
            "--resume: {} of {} outputs already done",
            done.len(),
            names.len()
        )),
        "stdout: {said}"
    );
    assert_eq!(
        tree(&resumed),
        expected,
        "partial files left behind or outputs missing"
    );
    for name in &expected {
        assert!(
            std::fs::read(resumed.join(name)).unwrap() == std::fs::read(whole.join(name)).unwrap(),
            "{} differs from the uninterrupted run",
            name.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Python with Ray (`$REGGAN_PYTHON`, else `python3` on PATH: the set-up's venv), or
/// None with a message.
fn python_with_ray() -> Option<PathBuf> {
    let python = std::env::var_os("REGGAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let has_ray = Command::new(&python)
        .args(["-c", "import ray"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ray {
        eprintln!(
            "SKIPPED ray_driver_on_two_local_workers_matches_a_local_run: `{} -c 'import ray'` \
             fails (pip install ray; scripts/setup.sh installs it into .deps/venv)",
            python.display()
        );
        return None;
    }
    Some(python)
}

#[test]
fn ray_driver_on_two_local_workers_matches_a_local_run() {
    let Some(face) = fixtures("ray_driver_on_two_local_workers_matches_a_local_run") else {
        return;
    };
    let Some(python) = python_with_ray() else {
        return;
    };
    let dir = scratch("ray");
    let clips = dir.join("clips");
    std::fs::create_dir_all(clips.join("b")).unwrap();
    let names = ["a1.mp4", "a2.mp4", "b/b1.mp4", "b/b2.mp4"];
    for (i, name) in names.iter().enumerate() {
        make_clip(&face, &clips.join(name), 30, Some(500.0 + 50.0 * i as f64));
    }
    std::fs::copy(&face, clips.join("b/face.jpg")).unwrap();
    let options = ["-e", "sad", "--threads", "1"];

    let local = dir.join("local");
    let mut args = vec![
        "apply",
        clips.to_str().unwrap(),
        "-o",
        local.to_str().unwrap(),
    ];
    args.extend(options);
    check("local batch", &reggan(&args));

    let on_ray = dir.join("ray");
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ray_apply.py");
    let run = Command::new(&python)
        .arg(&driver)
        .arg(&clips)
        .arg(&on_ray)
        .args([
            "--local-workers",
            "2",
            "--reggan",
            env!("CARGO_BIN_EXE_reggan"),
            "--",
        ])
        .args(options)
        .output()
        .expect("python runs the driver");
    let said = check("examples/ray_apply.py --local-workers 2", &run);
    assert!(said.contains("5 files on 2 Ray nodes"), "stdout: {said}");
    assert!(said.contains("done: 5 files"), "stdout: {said}");
    let workers: std::collections::HashSet<&str> = said
        .lines()
        .filter_map(|l| l.rsplit_once(" on ").map(|(_, w)| w))
        .collect();
    assert!(workers.len() >= 2, "every file ran in one worker: {said}");

    let expected = tree(&local);
    assert_eq!(expected.len(), 5);
    assert_eq!(tree(&on_ray), expected, "different files from the cluster");
    for name in &expected {
        assert!(
            std::fs::read(on_ray.join(name)).unwrap() == std::fs::read(local.join(name)).unwrap(),
            "{} differs between the Ray run and the local run",
            name.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn audio_the_container_cannot_hold_is_refused_by_name_and_kept_in_mkv() {
    let test = "audio_the_container_cannot_hold_is_refused_by_name_and_kept_in_mkv";
    let Some(face) = fixtures(test) else {
        return;
    };
    if let Some(f) = ["vorbisenc", "matroskamux"]
        .into_iter()
        .find(|f| gst::ElementFactory::find(f).is_none())
    {
        eprintln!("SKIPPED {test}: GStreamer element {f} missing");
        return;
    }
    let dir = scratch("vorbis");
    let input = dir.join("talk.mkv");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! jpegdec ! videoconvert ! videoscale ! \
         video/x-raw,width={SIZE},height={SIZE} ! imagefreeze num-buffers=20 ! \
         video/x-raw,framerate={FPS}/1 ! videoconvert ! video/x-raw,format=I420 ! x264enc ! mux. \
         audiotestsrc num-buffers=20 ! audioconvert ! vorbisenc ! mux. \
         matroskamux name=mux ! filesink location=\"{}\"",
        face.display(),
        input.display()
    ))
    .unwrap();
    run_pipeline(&pipeline);

    let mp4 = dir.join("talk.mp4");
    let refused = reggan(&[
        "apply",
        input.to_str().unwrap(),
        "-o",
        mp4.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "Vorbis went into MP4");
    assert!(
        err.contains("audio/x-vorbis") && err.contains(".mkv"),
        "unclear message: {err}"
    );
    assert_eq!(
        tree(&dir),
        vec![PathBuf::from("talk.mkv")],
        "files left behind"
    );

    let mkv = dir.join("talk-happy.mkv");
    check(
        "apply to .mkv",
        &reggan(&[
            "apply",
            input.to_str().unwrap(),
            "-o",
            mkv.to_str().unwrap(),
        ]),
    );
    let vorbis = |p: &Path| {
        streams(p)
            .into_iter()
            .find(|s| s.caps.starts_with("audio/x-vorbis"))
            .expect("a Vorbis stream")
            .bytes
    };
    assert!(
        vorbis(&input) == vorbis(&mkv),
        "the Vorbis audio was changed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
