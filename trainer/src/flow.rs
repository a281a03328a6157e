//! Dense optical flow between two crops of the same person (OpenCV DIS), in the
//! product's backward convention: `flow(x)` is where the edited crop at pixel x reads
//! the input crop, so `target(x) ≈ source(x + flow(x))`.
//!
//! DIS (Kroeger et al. 2016) with its variational refinement gives a smooth field on
//! faces in about a millisecond per 128x128 pair, which is what `regflow` needs for
//! tens of thousands of training pairs.

use anyhow::{ensure, Result};
use opencv::core::{Mat, Vec2f, CV_8UC1};
use opencv::prelude::*;
use opencv::video;
use tch::{Kind, Tensor};

/// Rec. 601 luma weights (what the exported graph uses too).
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// A reusable DIS estimator.
pub struct FlowEstimator {
    dis: opencv::core::Ptr<video::DISOpticalFlow>,
}

impl FlowEstimator {
    pub fn new() -> Result<Self> {
        let mut dis = video::DISOpticalFlow::create(video::DISOpticalFlow_PRESET_MEDIUM)?;
        // Finer patches and more refinement than the preset: our crops are small and
        // the displacements we care about (a lip corner) are a few pixels.
        dis.set_patch_size(8)?;
        dis.set_patch_stride(3)?;
        dis.set_variational_refinement_iterations(10)?;
        Ok(FlowEstimator { dis })
    }

    /// Backward flow [2,S,S] (dx, dy in pixels) from `target` to `source`, both planar
    /// RGB [3,S,S] in [0,1]: `target(x) ≈ source(x + flow(x))`.
    pub fn estimate(&mut self, target: &Tensor, source: &Tensor) -> Result<Tensor> {
        let (h, w) = (target.size()[1], target.size()[2]);
        ensure!(
            source.size() == target.size(),
            "flow between crops of different sizes"
        );
        let (t, s) = (gray_mat(target)?, gray_mat(source)?);
        let mut flow = Mat::default();
        self.dis.calc(&t, &s, &mut flow)?;
        let data: Vec<f32> = flow
            .data_typed::<Vec2f>()?
            .iter()
            .flat_map(|v| [v[0], v[1]])
            .collect();
        Ok(Tensor::from_slice(&data)
            .view([h, w, 2])
            .permute([2, 0, 1])
            .contiguous())
    }
}

/// Luma [N,1,H,W] of planar RGB faces [N,3,H,W].
pub fn luma(faces: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&LUMA)
        .to_kind(faces.kind())
        .to_device(faces.device())
        .view([1, 3, 1, 1]);
    (faces * w).sum_dim_intlist(1, true, None)
}

fn gray_mat(img: &Tensor) -> Result<Mat> {
    let (h, w) = (img.size()[1], img.size()[2]);
    let g = (luma(&img.unsqueeze(0).to_kind(Kind::Float)) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous();
    let bytes = Vec::<u8>::try_from(&g.flatten(0, -1))?;
    let mut m = Mat::new_rows_cols_with_default(
        h as i32,
        w as i32,
        CV_8UC1,
        opencv::core::Scalar::all(0.0),
    )?;
    m.data_bytes_mut()?.copy_from_slice(&bytes);
    Ok(m)
}

/// Warps faces [N,3,S,S] by backward flows [N,2,S,S] in pixels: out(x) = in(x + flow(x)),
/// bilinear, borders replicated: the same sampling as the exported graph's GridSample
/// and the runtime's `cv::remap`.
pub fn warp(faces: &Tensor, flow: &Tensor) -> Tensor {
    let (n, s) = (faces.size()[0], faces.size()[2]);
    let grid = base_grid(s, faces.device()) + flow.permute([0, 2, 3, 1]) * (2.0 / s as f64);
    faces
        .to_kind(Kind::Float)
        .grid_sampler(&grid.to_kind(Kind::Float), 0, 1, false)
        .view([n, 3, s, s])
}

/// Normalised pixel-centre coordinates [1,S,S,2] (x, y) of GridSample with
/// align_corners = false.
pub fn base_grid(s: i64, device: tch::Device) -> Tensor {
    let c = (Tensor::arange(s, (Kind::Float, device)) * 2.0 + 1.0) / s as f64 - 1.0;
    let gx = c.view([1, s]).expand([s, s], false);
    let gy = c.view([s, 1]).expand([s, s], false);
    Tensor::stack(&[gx, gy], 2).unsqueeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth random texture [3,S,S] in [0.1, 0.9]: blurred noise at two scales, so
    /// DIS has structure everywhere.
    fn texture(s: i64) -> Tensor {
        tch::manual_seed(7);
        let coarse = Tensor::rand([1, 3, s / 8, s / 8], (Kind::Float, tch::Device::Cpu))
            .upsample_bicubic2d([s, s], false, None, None);
        let fine = Tensor::rand([1, 3, s / 2, s / 2], (Kind::Float, tch::Device::Cpu))
            .upsample_bilinear2d([s, s], false, None, None);
        (coarse * 0.6 + fine * 0.4).clamp(0.1, 0.9).squeeze_dim(0)
    }

    /// Mean endpoint error between two flows [2,S,S] over the interior (a margin of
    /// `m` pixels, where the border replication makes any flow ambiguous).
    fn interior_error(a: &Tensor, b: &Tensor, m: i64) -> f64 {
        let s = a.size()[1];
        let d = (a - b).narrow(1, m, s - 2 * m).narrow(2, m, s - 2 * m);
        d.square()
            .sum_dim_intlist(0, false, None)
            .sqrt()
            .mean(Kind::Double)
            .double_value(&[])
    }

    fn recovered(known: &Tensor) -> f64 {
        let source = texture(128);
        let target = warp(&source.unsqueeze(0), &known.unsqueeze(0)).squeeze_dim(0);
        let mut est = FlowEstimator::new().unwrap();
        let flow = est.estimate(&target, &source).unwrap();
        interior_error(&flow, known, 12)
    }

    fn field(f: impl Fn(f64, f64) -> (f64, f64)) -> Tensor {
        let s = 128;
        let mut v = vec![0f32; 2 * s * s];
        for y in 0..s {
            for x in 0..s {
                let (dx, dy) = f(x as f64, y as f64);
                v[y * s + x] = dx as f32;
                v[s * s + y * s + x] = dy as f32;
            }
        }
        Tensor::from_slice(&v).view([2, s as i64, s as i64])
    }

    #[test]
    fn recovers_a_shift_a_shear_and_a_local_bump() {
        let shift = field(|_, _| (2.5, -1.5));
        let shear = field(|_, y| (0.04 * (y - 64.0), 0.0));
        // A Gaussian bump moving a 'lip corner' by up to 3 px.
        let bump = field(|x, y| {
            let g = (-((x - 80.0).powi(2) + (y - 90.0).powi(2)) / (2.0 * 12.0 * 12.0)).exp();
            (3.0 * g, -2.0 * g)
        });
        for (name, f) in [("shift", shift), ("shear", shear), ("bump", bump)] {
            let err = recovered(&f);
            println!("{name}: mean endpoint error {err:.3} px");
            assert!(
                err < 0.25,
                "{name}: flow recovered to {err:.3} px, want < 0.25"
            );
        }
    }

    #[test]
    fn warp_follows_the_backward_convention() {
        // out(x) = in(x + 1): content moves one pixel left.
        let img = texture(32).unsqueeze(0);
        let flow = Tensor::ones([1, 2, 32, 32], (Kind::Float, tch::Device::Cpu))
            * Tensor::from_slice(&[1f32, 0.0]).view([1, 2, 1, 1]);
        let out = warp(&img, &flow);
        let diff = (out.narrow(3, 0, 31) - img.narrow(3, 1, 31))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn luma_of_grey_is_grey() {
        let g = Tensor::full([1, 3, 2, 2], 0.4, (Kind::Float, tch::Device::Cpu));
        let l = luma(&g);
        assert_eq!(l.size(), vec![1, 1, 2, 2]);
        assert!((l.mean(Kind::Double).double_value(&[]) - 0.4).abs() < 1e-6);
    }
}
