//! A fake [`InferenceEngine`] for tests: no model file, no ONNX Runtime. Each item's scores are a
//! simple function of its input values, so a test can say what every row must be; it can be told
//! to fail on chosen items (a batch holding one fails as a whole, as a real model does, so the
//! pipeline's item-by-item retry runs), to take time per batch, and it counts its runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{
    BatchOutput, EngineError, EngineLoader, EngineOptions, Float, InferenceEngine, ModelInfo,
    TensorInfo,
};

/// How a [`FakeEngine`] behaves.
#[derive(Debug, Clone)]
pub struct FakeModel {
    /// The input's dimensions per item (without the batch dimension), e.g. `[1, 8, 8]`.
    pub item_dims: Vec<i64>,
    /// Scores per item.
    pub classes: usize,
    /// A batch holding an item whose first input value is this fails.
    pub fail_on_first_value: Option<f32>,
    /// Every run takes this long.
    pub delay: Duration,
    /// Batches run, over every engine made from this model.
    pub runs: Arc<AtomicUsize>,
}

impl FakeModel {
    /// A model taking `item_dims` float32 values per item and giving `classes` scores.
    pub fn new(item_dims: &[i64], classes: usize) -> Self {
        Self {
            item_dims: item_dims.to_vec(),
            classes,
            fail_on_first_value: None,
            delay: Duration::ZERO,
            runs: Arc::default(),
        }
    }

    /// The scores the fake gives an item with these input values: score `c` is the sum of the
    /// values times `c + 1`, so the last class always scores highest for a positive sum.
    pub fn scores(values: &[f32], classes: usize) -> Vec<f32> {
        let sum: f32 = values.iter().sum();
        (0..classes).map(|c| sum * (c + 1) as f32).collect()
    }
}

/// The engine a [`FakeModel`] loads into.
#[derive(Debug)]
pub struct FakeEngine {
    model: FakeModel,
    info: ModelInfo,
}

impl FakeEngine {
    /// An engine for `model`.
    pub fn new(model: FakeModel) -> Self {
        let mut input_dims = vec![-1];
        input_dims.extend_from_slice(&model.item_dims);
        let info = ModelInfo {
            input: TensorInfo {
                name: "x".into(),
                element: "f32".into(),
                float: Some(Float::F32),
                dims: input_dims,
            },
            output: TensorInfo {
                name: "scores".into(),
                element: "f32".into(),
                float: Some(Float::F32),
                dims: vec![-1, model.classes as i64],
            },
            token_inputs: Vec::new(),
        };
        Self { model, info }
    }
}

impl InferenceEngine for FakeEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&mut self, input: &[f32], shape: &[i64]) -> Result<BatchOutput, EngineError> {
        self.model.runs.fetch_add(1, Ordering::Relaxed);
        if !self.model.delay.is_zero() {
            std::thread::sleep(self.model.delay);
        }
        let n = shape
            .first()
            .and_then(|b| usize::try_from(*b).ok())
            .ok_or_else(|| EngineError::Run(format!("no batch dimension in {shape:?}")))?;
        let per: usize = self
            .model
            .item_dims
            .iter()
            .map(|d| usize::try_from(*d).unwrap_or(0))
            .product();
        if input.len() != n * per {
            return Err(EngineError::Run(format!(
                "input has {} values, the shape {shape:?} needs {}",
                input.len(),
                n * per
            )));
        }
        let mut data = Vec::with_capacity(n * self.model.classes);
        for item in input.chunks(per.max(1)).take(n) {
            if self.model.fail_on_first_value.is_some()
                && item.first().copied() == self.model.fail_on_first_value
            {
                return Err(EngineError::Run("the fake model fails on this item".into()));
            }
            data.extend(FakeModel::scores(item, self.model.classes));
        }
        Ok(BatchOutput {
            shape: vec![n, self.model.classes],
            data,
        })
    }
}

impl EngineLoader for FakeModel {
    fn load(
        &self,
        _model: &[u8],
        _opts: &EngineOptions,
    ) -> Result<Box<dyn InferenceEngine>, EngineError> {
        Ok(Box::new(FakeEngine::new(self.clone())))
    }
}
