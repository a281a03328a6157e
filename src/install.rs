//! Where reggan finds its run-time files: the default model, the ONNX Runtime library,
//! the BlazeFace detector and the demo face.
//!
//! One search order for all of them, after an explicit property or option (which the
//! callers check first):
//!
//! 1. an environment variable (`REGGAN_MODEL`, `ORT_DYLIB_PATH`, `REGGAN_BLAZEFACE_DIR`),
//! 2. the install prefix `scripts/install.sh` wrote, found from where the running code
//!    lives (`PREFIX/bin/reggan` or `PREFIX/lib/gstreamer-1.0/libgstreggan.so`, links
//!    resolved), so an installed element works in a new shell without any variable,
//! 3. the build tree this crate was compiled in (`models/`, `.deps/`, `assets/`).
//!
//! Layout under PREFIX (kept in step with `scripts/install.sh`):
//! `bin/reggan`, `lib/gstreamer-1.0/libgstreggan.so`, `lib/reggan/libonnxruntime.so.*`,
//! `share/reggan/{models/<name>, blazeface/, london-012-neutral.jpg, NOTICE, install-manifest.txt}`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Written last by `scripts/install.sh`: its presence marks a finished install.
pub const MANIFEST: &str = "share/reggan/install-manifest.txt";
/// The ONNX Runtime library the project is built against (same name in `.deps/` and
/// in an install).
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";
/// The committed demo face (Face Research Lab London Set, CC BY 4.0; see NOTICE).
pub const DEMO_FACE: &str = "london-012-neutral.jpg";

/// The build tree this crate was compiled in.
fn build_tree() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The prefix of the install this code runs from, or `None` when it runs from a build
/// tree (or from anywhere without an install manifest above it).
pub fn installed_prefix() -> Option<&'static Path> {
    static PREFIX: OnceLock<Option<PathBuf>> = OnceLock::new();
    PREFIX
        .get_or_init(|| prefix_above(&running_module()?))
        .as_deref()
}

/// The nearest ancestor of `module` (at most four levels up, enough for
/// `PREFIX/lib/<triplet>/gstreamer-1.0/x.so`) that holds an install manifest.
pub fn prefix_above(module: &Path) -> Option<PathBuf> {
    module
        .ancestors()
        .skip(1)
        .take(4)
        .find(|dir| dir.join(MANIFEST).is_file())
        .map(Path::to_path_buf)
}

/// The file (executable or shared library) this code was loaded from, links resolved.
/// Read from /proc/self/maps rather than `current_exe`, because inside
/// `libgstreggan.so` the executable is `gst-launch-1.0` or the user's app, not us.
fn running_module() -> Option<PathBuf> {
    let here = running_module as *const () as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        );
        if !(start..end).contains(&here) {
            return None;
        }
        let path = fields.nth(4)?;
        path.starts_with('/')
            .then(|| PathBuf::from(path))
            .and_then(|p| p.canonicalize().ok())
    })
}

/// Environment variable, else `installed` under the install prefix, else `build`.
fn search(env_var: &str, installed: &str, build: PathBuf) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    installed_prefix()
        .map(|prefix| prefix.join(installed))
        .unwrap_or(build)
}

/// The model used when none is given: `$REGGAN_MODEL`, the installed `models/mr`, the
/// build tree's `models/mr`.
pub fn default_model_dir() -> PathBuf {
    search(
        "REGGAN_MODEL",
        "share/reggan/models/mr",
        build_tree().join("models/mr"),
    )
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, the installed copy, else where
/// `scripts/setup.sh` put it when this crate was built.
pub fn onnxruntime_path() -> PathBuf {
    let build = option_env!("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| build_tree().join(".deps/onnxruntime").join(ORT_LIBRARY));
    search(
        "ORT_DYLIB_PATH",
        &format!("lib/reggan/{ORT_LIBRARY}"),
        build,
    )
}

/// The BlazeFace ONNX files: `$REGGAN_BLAZEFACE_DIR`, the installed copy, else where
/// `scripts/setup.sh` put them when this crate was built.
pub fn blazeface_dir() -> PathBuf {
    let build = option_env!("REGGAN_BLAZEFACE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| build_tree().join(".deps/blazeface"));
    search("REGGAN_BLAZEFACE_DIR", "share/reggan/blazeface", build)
}

/// The neutral demo face: `$REGGAN_DEMO_IMAGE`, the installed copy, the committed one.
pub fn demo_face() -> PathBuf {
    search(
        "REGGAN_DEMO_IMAGE",
        &format!("share/reggan/{DEMO_FACE}"),
        build_tree().join("assets").join(DEMO_FACE),
    )
}
