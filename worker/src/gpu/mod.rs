//! GPU preprocessing: batches of decoded images resized and normalised on the GPU. CUDA is loaded
//! at run time (`cudarc` with dynamic loading), so the worker builds and runs on machines without
//! a GPU or CUDA toolkit.
//!
//! Decode threads hand over decoded RGB pixels at their own size; the engine
//! thread packs a batch of them into a pinned host buffer, copies it up on one of several streams
//! and runs two kernels compiled at run time with NVRTC: a vertical pass (with colour conversion
//! for gray models) into an 8-bit intermediate, then a horizontal pass that normalises, lays out
//! (NCHW or NHWC, RGB or BGR) and writes float32 or float16 values straight into the batch tensor
//! in device memory, which ONNX Runtime reads through IO binding. The resampling is the CPU
//! path's exactly: fast_image_resize's bilinear convolution (Pillow's, with the support widened
//! when downscaling) in the same fixed-point arithmetic, vertical pass first, so the GPU tensor
//! equals the CPU reference up to float rounding.

use spotbatch_proto::manifest::{Color, Layout};

use crate::engine::Float;
use crate::preprocess::image::ImagePreprocessor;

#[cfg(feature = "gpu")]
mod cuda;
#[cfg(feature = "gpu")]
pub mod kernels;
#[cfg(not(feature = "gpu"))]
mod none;

#[cfg(feature = "gpu")]
pub use cuda::{GpuPreprocessor, Prepared};
#[cfg(feature = "gpu")]
pub use kernels::{coefficients, compile_kernels_early, kernels_ptx, Coefficients};
#[cfg(not(feature = "gpu"))]
pub use none::{compile_kernels_early, GpuPreprocessor, Prepared};

/// How preprocessed values are laid out, shared by the CPU and GPU paths.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Target width.
    pub width: u32,
    /// Target height.
    pub height: u32,
    /// Channel order (gray: one channel).
    pub color: Color,
    /// Tensor layout.
    pub layout: Layout,
    /// Per channel: value = byte * mul + add.
    pub mul: Vec<f32>,
    /// Per channel: value = byte * mul + add.
    pub add: Vec<f32>,
    /// The model input's element type.
    pub float: Float,
}

impl TensorSpec {
    /// The tensor an image preprocessor makes on the CPU, in `float`.
    pub fn for_images(pre: &ImagePreprocessor, float: Float) -> Self {
        Self {
            width: pre.width,
            height: pre.height,
            color: pre.color,
            layout: pre.layout,
            mul: pre.mul.clone(),
            add: pre.add.clone(),
            float,
        }
    }

    fn channels(&self) -> usize {
        self.color.channels()
    }

    /// Values per item.
    pub fn item_len(&self) -> usize {
        self.channels() * self.width as usize * self.height as usize
    }
}

/// Why the GPU path cannot run, or failed on a batch; each says so in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// CUDA cannot be used here (no driver, no GPU, libraries missing).
    #[error("{0}")]
    Unavailable(String),
    /// A CUDA call failed.
    #[error("GPU preprocessing: {what}: {message}")]
    Driver {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        message: String,
    },
    /// NVRTC could not load or compile the kernels.
    #[error("GPU preprocessing: {0}")]
    Compile(String),
    /// The batch handed in does not fit its description.
    #[error("GPU preprocessing: {0}")]
    Input(String),
}
