//! Image and distribution measures of `eval`: grey conversion, the sharpness ratio
//! inside the face mask, and the Fréchet distance between two feature sets.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// RGB [N,3,H,W] -> grey [N,1,H,W] with the BT.601 weights (OpenCV's RGB2GRAY).
pub fn grey(faces: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).view([1, 3, 1, 1]);
    (faces.to_kind(Kind::Float) * w).sum_dim_intlist(1, true, Kind::Float)
}

/// The core's face mask [1,1,S,S] (1 inside the face, feathered, 0 at the border).
pub fn face_mask(size: usize) -> Tensor {
    let s = size as i64;
    Tensor::from_slice(&reggan::composite::face_mask(size)).view([1, 1, s, s])
}

/// Per face: variance of the 4-neighbour Laplacian of the grey image over the pixels
/// where the face mask is above 0.5 (the 1-pixel border excluded). Faces [N,3,S,S].
pub fn laplacian_variance(faces: &Tensor) -> Tensor {
    let s = faces.size()[2];
    let g = grey(faces);
    let k =
        Tensor::from_slice(&[0.0f32, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0]).view([1, 1, 3, 3]);
    let lap = g.conv2d(&k, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1); // [N,1,S,S]
    let m = face_mask(s as usize).gt(0.5).to_kind(Kind::Float);
    let n = m.sum(Kind::Float);
    let mean = (&lap * &m).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float) / &n;
    let dev = (lap - mean.view([-1, 1, 1, 1])) * &m;
    (&dev * &dev).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float) / n
}

/// Mean over faces of sharpness(output) / sharpness(input), sharpness being the
/// Laplacian variance inside the face mask. Below 1: the output is blurrier.
pub fn sharpness_ratio(outputs: &Tensor, inputs: &Tensor) -> f64 {
    let r = laplacian_variance(outputs) / laplacian_variance(inputs).clamp_min(1e-12);
    r.mean(Kind::Float).double_value(&[])
}

/// Mean and covariance (unbiased; zero for one sample) of features [N,D], in f64.
pub fn moments(x: &Tensor) -> (Tensor, Tensor) {
    let x = x.to_kind(Kind::Double);
    let n = x.size()[0];
    let mu = x.mean_dim(0, false, Kind::Double);
    let c = &x - &mu;
    let cov = c.transpose(0, 1).matmul(&c) / ((n - 1).max(1) as f64);
    (mu, cov)
}

/// Symmetric PSD square root through the eigendecomposition (negative eigenvalues from
/// rounding are clamped to 0).
fn sqrt_psd(a: &Tensor) -> Tensor {
    let (vals, vecs) = a.linalg_eigh("L");
    let d = vals.clamp_min(0.0).sqrt();
    (&vecs * d.unsqueeze(0)).matmul(&vecs.transpose(0, 1))
}

/// Fréchet distance between Gaussians fitted to two feature sets [N1,D] and [N2,D]:
/// |μ1-μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½), with tr((Σ1Σ2)^½) computed as the sum of the
/// square roots of the eigenvalues of the symmetric Σ1^½ Σ2 Σ1^½ (the same spectrum).
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.size().len() != 2 || b.size().len() != 2 || a.size()[1] != b.size()[1] {
        bail!(
            "feature sets must be [N,D] with the same D, got {:?} and {:?}",
            a.size(),
            b.size()
        );
    }
    if a.size()[0] < 2 || b.size()[0] < 2 {
        bail!("a Fréchet distance needs at least 2 samples per set");
    }
    let (m1, s1) = moments(a);
    let (m2, s2) = moments(b);
    let r1 = sqrt_psd(&s1);
    let mid = r1.matmul(&s2).matmul(&r1);
    let mid = (&mid + mid.transpose(0, 1)) / 2.0;
    let tr_sqrt = mid
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double);
    let diff = &m1 - &m2;
    let d = diff.dot(&diff) + s1.trace() + s2.trace() - tr_sqrt * 2.0;
    Ok(d.double_value(&[]).max(0.0))
}

/// Separable Gaussian blur of faces [N,C,H,W] (reflect padding), for tests and checks.
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let c = x.size()[1];
    let n = 2 * r + 1;
    let kh = Tensor::from_slice(&k)
        .view([1, 1, 1, n])
        .repeat([c, 1, 1, 1]);
    let kv = Tensor::from_slice(&k)
        .view([1, 1, n, 1])
        .repeat([c, 1, 1, 1]);
    let y = x
        .to_kind(Kind::Float)
        .pad([r, r, 0, 0], "reflect", None)
        .conv2d(&kh, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    y.pad([0, 0, r, r], "reflect", None)
        .conv2d(&kv, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}
