// SPDX-License-Identifier: MIT OR Apache-2.0
//! `reggan-fuzz`: runs the fuzz targets of `reggan_fuzz` on stable Rust.
//!
//! ```text
//! reggan-fuzz run TARGET [--seconds N] [--dir fuzz]   fuzz for N seconds (default 60)
//! reggan-fuzz replay TARGET FILE...                   run inputs once each
//! reggan-fuzz list                                    the targets
//! ```
//!
//! `run` is a supervisor: it starts a worker process that mutates the corpus
//! (`DIR/corpus/TARGET/`) and runs the target in a loop, writing each input to
//! `DIR/artifacts/TARGET/current` before running it. A panic is caught in the worker;
//! a worker killed by a signal (abort, segfault, out of memory) or silent for
//! [`HANG_SECONDS`] has its current input saved as `crash-*` or `hang-*`, and a new
//! worker goes on until the time is up. Without coverage instrumentation (that needs
//! a nightly toolchain and a sanitizer build of OpenCV and ONNX Runtime) the worker
//! keeps an input that produced an outcome label it had not seen (see `targets.rs`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use reggan_fuzz::TARGETS;

/// A worker that has not started a new input for this long is hung.
const HANG_SECONDS: u64 = 60;
const MAX_LEN: usize = 64 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("list") => {
            println!("{}", TARGETS.join("\n"));
            Ok(true)
        }
        Some("run") => Options::parse(&args[1..]).and_then(|o| supervise(&o)),
        Some("worker") => Options::parse(&args[1..]).and_then(|o| work(&o)),
        Some("replay") if args.len() >= 3 => replay(&args[1], &args[2..]),
        _ => Err("usage: reggan-fuzz run TARGET [--seconds N] [--dir DIR] | replay TARGET FILE... | list".into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("reggan-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    target: String,
    seconds: u64,
    dir: PathBuf,
    seed: u64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let target = args.first().ok_or("which target?")?.clone();
        if !TARGETS.contains(&target.as_str()) {
            return Err(format!("unknown target {target} (known: {TARGETS:?})"));
        }
        let mut o = Options {
            target,
            seconds: 60,
            dir: PathBuf::from("fuzz"),
            seed: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        };
        let mut it = args[1..].iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--seconds" => o.seconds = number()?,
                "--seed" => o.seed = number()?,
                "--dir" => o.dir = PathBuf::from(value),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(o)
    }

    fn corpus(&self) -> PathBuf {
        self.dir.join("corpus").join(&self.target)
    }
    fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts").join(&self.target)
    }
    fn current(&self) -> PathBuf {
        self.artifacts().join("current")
    }
}

/// FNV-1a, for artifact and corpus file names.
fn hash(data: &[u8]) -> String {
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

fn save(dir: &Path, prefix: &str, data: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("artifact directory");
    let path = dir.join(format!("{prefix}{}", hash(data)));
    std::fs::write(&path, data).expect("artifact written");
    path
}

// ---------------------------------------------------------------------------------------
// Supervisor

fn supervise(o: &Options) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(o.artifacts()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let (mut execs, mut crashes, mut hangs, mut workers) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    while Instant::now() < deadline {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let mut child = Command::new(&exe)
            .args(["worker", &o.target, "--seconds", &left.to_string()])
            .args(["--dir", &o.dir.to_string_lossy()])
            .args(["--seed", &(o.seed.wrapping_add(workers)).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        workers += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut worker_execs = 0u64;
            let mut worker_crashes = 0u64;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                if let Some(n) = field(&line, "execs=") {
                    worker_execs = n;
                }
                if let Some(n) = field(&line, "crashes=") {
                    worker_crashes = n;
                }
            }
            (worker_execs, worker_crashes)
        });
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(status);
            }
            let idle = std::fs::metadata(o.current())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if idle > Duration::from_secs(HANG_SECONDS) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let (worker_execs, worker_crashes) = reader.join().unwrap_or_default();
        execs += worker_execs;
        crashes += worker_crashes;
        let current = std::fs::read(o.current()).unwrap_or_default();
        match status {
            None => {
                hangs += 1;
                let path = save(&o.artifacts(), "hang-", &current);
                println!(
                    "HANG: worker silent for {HANG_SECONDS} s; input saved to {}",
                    path.display()
                );
            }
            // Killed by a signal (abort, segfault, the kernel's OOM killer): the input
            // it was running is the crash. Exit code 1 is a worker that caught panics.
            Some(status) if status.code().is_none_or(|code| code > 1) => {
                crashes += 1;
                let path = save(&o.artifacts(), "crash-", &current);
                println!(
                    "CRASH: worker died ({status}); input saved to {}",
                    path.display()
                );
            }
            Some(_) => {}
        }
    }
    let _ = std::fs::remove_file(o.current());
    println!(
        "SUMMARY target={} seconds={} execs={execs} crashes={crashes} hangs={hangs} workers={workers}",
        o.target,
        started.elapsed().as_secs()
    );
    Ok(crashes == 0 && hangs == 0)
}

fn field(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Worker

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn work(o: &Options) -> Result<bool, String> {
    let mut corpus = load_corpus(o)?;
    let mut rng = Rng(o.seed | 1);
    let dictionary = dictionary(&o.target);
    // The panic message goes to the report, not to a wall of backtraces.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("panic: {info}");
    }));
    let mut labels = HashSet::new();
    let (mut execs, mut crashes) = (0u64, 0u64);
    let current = o.current();
    let run_one = |data: &[u8], execs: &mut u64, crashes: &mut u64| -> Option<String> {
        std::fs::write(&current, data).expect("current input written");
        *execs += 1;
        match std::panic::catch_unwind(|| reggan_fuzz::run(&o.target, data)) {
            Ok(label) => Some(label),
            Err(_) => {
                *crashes += 1;
                let path = save(&o.artifacts(), "crash-", data);
                println!("CRASH: panic; input saved to {}", path.display());
                None
            }
        }
    };
    for data in &corpus {
        if let Some(label) = run_one(data, &mut execs, &mut crashes) {
            labels.insert(label);
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.seconds);
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let parent = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let data = mutate(parent, other, &dictionary, &mut rng);
        if let Some(label) = run_one(&data, &mut execs, &mut crashes) {
            if labels.insert(label.clone()) {
                save(&o.corpus(), "", &data);
                println!("NEW {label}");
                corpus.push(data);
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "target={} execs={execs} crashes={crashes} corpus={} labels={}",
                o.target,
                corpus.len(),
                labels.len()
            );
            last_report = Instant::now();
        }
    }
    println!(
        "DONE target={} seconds={} execs={execs} crashes={crashes} corpus={} labels={}",
        o.target,
        started.elapsed().as_secs(),
        corpus.len(),
        labels.len()
    );
    let _ = std::fs::remove_file(&current);
    Ok(crashes == 0)
}

fn load_corpus(o: &Options) -> Result<Vec<Vec<u8>>, String> {
    let dir = o.corpus();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut corpus: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    if corpus.is_empty() {
        for seed in seeds(&o.target) {
            save(&dir, "seed-", &seed);
            corpus.push(seed);
        }
    }
    Ok(corpus)
}

/// First inputs of a target with an empty corpus.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let patterns = || {
        (0..16u8)
            .map(|i| {
                (0..96u8)
                    .map(|j| i.wrapping_mul(37) ^ j.wrapping_mul(11))
                    .collect()
            })
            .collect()
    };
    match target {
        "manifest" => {
            let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
            let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(models)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("model.json")).ok())
                .collect();
            seeds.push(br#"{"format_version":1,"family":"f","method":"m","crop_size":16,"template":{"size":16,"points":[[5,5],[11,5],[8,9],[8,12]]},"expressions":["happy"],"normalization":"rgb01","trainer_version":"t"}"#.to_vec());
            seeds
        }
        "image" => {
            use opencv::core::{Mat, Scalar, Vector, CV_8UC3};
            let mut seeds = Vec::new();
            for (ext, side) in [
                (".png", 8),
                (".jpg", 16),
                (".bmp", 4),
                (".ppm", 3),
                (".tif", 5),
            ] {
                let img = Mat::new_rows_cols_with_default(
                    side,
                    side + 1,
                    CV_8UC3,
                    Scalar::new(10.0, 120.0, 240.0, 0.0),
                )
                .expect("image");
                let mut buf = Vector::<u8>::new();
                if opencv::imgcodecs::imencode(ext, &img, &mut buf, &Vector::new()).unwrap_or(false)
                {
                    seeds.push(buf.as_slice().to_vec());
                }
            }
            seeds
        }
        _ => patterns(),
    }
}

/// Byte strings worth inserting, per target.
fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let words: &[&str] = match target {
        "manifest" => &[
            "\"crop_size\": 4294967295",
            "\"crop_size\": 100000",
            "\"crop_size\": 0",
            "\"size\": 0",
            "\"size\": 100000",
            "1e39",
            "-1e39",
            "1e308",
            "-0",
            "null",
            "[]",
            "{}",
            "\"\"",
            "\"format_version\": 2",
            "\"outputs\": [\"face_out\", \"flow\"]",
            "\"outputs\": []",
            "\"expressions\": []",
            "\"expressions\": [\"happy\", \"happy\"]",
            "18446744073709551616",
            "\"points\": [[0,0],[0,0],[0,0],[0,0]]",
            "\"points\": [[1e30,0],[0,1e30],[0,0],[1,1]]",
            "\\u0000",
            "\"\\ud800\"",
            ",",
            ":",
            "\"template\": {\"size\": 65536, \"points\": [[0,0],[1,0],[0,1],[1,1]]}",
        ],
        "image" => &[
            "\u{89}PNG\r\n\u{1a}\n",
            "IHDR",
            "IDAT",
            "IEND",
            "\u{ff}\u{d8}\u{ff}",
            "BM",
            "P6\n",
            "II*\0",
        ],
        _ => &[],
    };
    let mut d: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    for v in [
        0u32,
        1,
        0x7fff_ffff,
        0xffff_ffff,
        0x8000_0000,
        0x0001_0000,
        0x0000_ffff,
    ] {
        d.push(v.to_le_bytes().to_vec());
        d.push(v.to_be_bytes().to_vec());
    }
    d
}

fn mutate(parent: &[u8], other: &[u8], dictionary: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = parent.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(9) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => data[at.min(len - 1)] = rng.next() as u8,
            2 if len > 0 => data[at.min(len - 1)] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            3 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let n = 1 + rng.below(len.min(64));
                let start = at.min(len - n);
                data.drain(start..start + n);
            }
            5 if len > 0 => {
                let start = at.min(len - 1);
                let n = 1 + rng.below((len - start).min(64));
                let piece = data[start..start + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, piece);
            }
            6 if !other.is_empty() => {
                let start = rng.below(other.len());
                let n = 1 + rng.below(other.len() - start);
                let to = at.min(len);
                let end = (to + n).min(len);
                data.splice(to..end, other[start..start + n].iter().copied());
            }
            7 if !dictionary.is_empty() => {
                let word = &dictionary[rng.below(dictionary.len())];
                if rng.below(2) == 0 || len < word.len() {
                    data.splice(at..at, word.iter().copied());
                } else {
                    let start = at.min(len - word.len());
                    data[start..start + word.len()].copy_from_slice(word);
                }
            }
            _ => {
                // A run of ASCII digits replaced by another number (sizes in JSON, text headers).
                if let Some(start) = (at..len).chain(0..at).find(|&i| data[i].is_ascii_digit()) {
                    let end = (start..len)
                        .find(|&i| !data[i].is_ascii_digit())
                        .unwrap_or(len);
                    let number = [
                        "0",
                        "1",
                        "65535",
                        "65536",
                        "2147483648",
                        "4294967296",
                        "99999999999",
                        "-1",
                    ][rng.below(8)];
                    data.splice(start..end, number.bytes());
                }
            }
        }
    }
    data.truncate(MAX_LEN);
    data
}

fn replay(target: &str, files: &[String]) -> Result<bool, String> {
    if !TARGETS.contains(&target) {
        return Err(format!("unknown target {target} (known: {TARGETS:?})"));
    }
    let mut ok = true;
    for file in files {
        let data = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
        match std::panic::catch_unwind(|| reggan_fuzz::run(target, &data)) {
            Ok(label) => println!("{file}: {label}"),
            Err(_) => {
                println!("{file}: PANIC");
                ok = false;
            }
        }
    }
    Ok(ok)
}
