//! A build without the `gpu` feature: no CUDA is linked or loaded; a GPU preprocessor cannot be
//! made (the worker preprocesses on the CPU), and nothing compiles kernels.

use super::{GpuError, TensorSpec};
use crate::preprocess::image::Pixels;

/// Nothing to compile without the GPU path.
pub fn compile_kernels_early() {}

/// Cannot exist in this build.
#[derive(Debug)]
pub enum Never {}

/// A GPU preprocessor: never made in this build.
#[derive(Debug)]
pub struct GpuPreprocessor(Never);

/// A batch on the GPU: never made in this build.
#[derive(Debug)]
pub struct Prepared(Never);

impl GpuPreprocessor {
    /// Always an error: this build has no GPU path.
    pub fn new(_gpu: u32, _spec: TensorSpec) -> Result<Self, GpuError> {
        Err(GpuError::Unavailable(
            "GPU preprocessing is not part of this build (built without the gpu feature)".into(),
        ))
    }

    /// Unreachable: no preprocessor exists.
    pub fn prepare(
        &mut self,
        _images: &[&Pixels],
        _run_n: usize,
        _out: Option<u64>,
    ) -> Result<Prepared, GpuError> {
        match self.0 {}
    }
}

impl Prepared {
    /// Unreachable: no batch exists.
    pub fn wait(&self) -> Result<(), GpuError> {
        match self.0 {}
    }
}
