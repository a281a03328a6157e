//! FSS: identity similarity with dlib's face-recognition ResNet
//! (`dlib_face_recognition_resnet_model_v1.dat` and `shape_predictor_5_face_landmarks.dat`
//! from PyPI `face-recognition-models` 0.3.0, put in `.deps/dlib/` by the setup), through
//! the C++ shim `trainer/csrc/fss.cpp` (Debian `libdlib-dev`).
//!
//! dlib's convention: two faces are the same person when the Euclidean distance of their
//! 128-D embeddings is below 0.6.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// dlib's same-person threshold on the embedding distance.
pub const SAME_PERSON: f64 = 0.6;

extern "C" {
    fn reggan_fss_load(
        shape_predictor: *const c_char,
        resnet: *const c_char,
        err: *mut c_char,
        errlen: c_int,
    ) -> *mut c_void;
    fn reggan_fss_free(handle: *mut c_void);
    #[allow(clippy::too_many_arguments)]
    fn reggan_fss_embed(
        handle: *mut c_void,
        rgb: *const u8,
        n: c_int,
        w: c_int,
        h: c_int,
        detect: c_int,
        rect: *const c_int,
        out: *mut f32,
        found: *mut c_int,
        err: *mut c_char,
        errlen: c_int,
    ) -> c_int;
}

/// Where `scripts/setup.sh` puts the two dlib models.
pub fn default_dir() -> PathBuf {
    super::deps_dir().join("dlib")
}

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The loaded shape predictor + ResNet.
pub struct FaceRecognizer {
    handle: *mut c_void,
}

impl Drop for FaceRecognizer {
    fn drop(&mut self) {
        // SAFETY: handle came from reggan_fss_load and is freed once.
        unsafe { reggan_fss_free(self.handle) }
    }
}

/// Embeddings of a batch and whether dlib's detector found each face.
pub struct Embeddings {
    /// [N,128]
    pub vectors: Tensor,
    /// Faces whose rectangle came from dlib's HOG detector (others: the template box).
    pub detected: usize,
}

impl FaceRecognizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let sp = dir.join("shape_predictor_5_face_landmarks.dat");
        let net = dir.join("dlib_face_recognition_resnet_model_v1.dat");
        for f in [&sp, &net] {
            if !f.is_file() {
                bail!(
                    "{} not found: run scripts/setup.sh (face-recognition-models 0.3.0)",
                    f.display()
                );
            }
        }
        let sp = CString::new(sp.to_string_lossy().as_bytes())?;
        let net = CString::new(net.to_string_lossy().as_bytes())?;
        let mut err = vec![0u8; 512];
        // SAFETY: valid NUL-terminated paths and an error buffer of the given length.
        let handle = unsafe {
            reggan_fss_load(
                sp.as_ptr(),
                net.as_ptr(),
                err.as_mut_ptr() as *mut c_char,
                err.len() as c_int,
            )
        };
        if handle.is_null() {
            bail!("dlib could not load its models: {}", message(&err));
        }
        Ok(FaceRecognizer { handle })
    }

    /// 128-D embeddings of aligned crops [N,3,S,S] in [0,1]. The face rectangle is
    /// dlib's frontal detector's when it finds one, else a fixed box of the aligned
    /// template (where the detector puts it on real crops).
    pub fn embed(&mut self, faces: &Tensor) -> Result<Embeddings> {
        let (n, s) = (faces.size()[0], faces.size()[2]);
        if n == 0 {
            return Ok(Embeddings {
                vectors: Tensor::zeros([0, 128], (Kind::Float, tch::Device::Cpu)),
                detected: 0,
            });
        }
        let bytes = (faces.to_kind(Kind::Float).permute([0, 2, 3, 1]) * 255.0)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8)
            .contiguous();
        let rgb = Vec::<u8>::try_from(&bytes.flatten(0, -1))?;
        let rect = template_box(s as usize);
        let mut out = vec![0f32; n as usize * 128];
        let mut found = vec![0 as c_int; n as usize];
        let mut err = vec![0u8; 512];
        // SAFETY: rgb holds n*s*s*3 bytes, out n*128 floats, found n ints, rect 4 ints.
        let rc = unsafe {
            reggan_fss_embed(
                self.handle,
                rgb.as_ptr(),
                n as c_int,
                s as c_int,
                s as c_int,
                1,
                rect.as_ptr(),
                out.as_mut_ptr(),
                found.as_mut_ptr(),
                err.as_mut_ptr() as *mut c_char,
                err.len() as c_int,
            )
        };
        if rc != 0 {
            bail!("dlib embedding failed: {}", message(&err));
        }
        Ok(Embeddings {
            vectors: Tensor::from_slice(&out).view([n, 128]),
            detected: found.iter().filter(|&&f| f != 0).count(),
        })
    }
}

/// The fallback face box {left, top, right, bottom} on an aligned S×S crop: roughly
/// where dlib's HOG detector finds the face in the 128-pixel LSRF-template crops
/// (measured on TFEID crops), scaled to S.
pub fn template_box(s: usize) -> [c_int; 4] {
    let f = s as f64 / 128.0;
    let r = |v: f64| (v * f).round() as c_int;
    [r(16.0), r(22.0), r(115.0), r(121.0)]
}

/// Row-wise Euclidean distances between embeddings [N,128] and [N,128].
pub fn distances(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b)
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        .sqrt()
}
