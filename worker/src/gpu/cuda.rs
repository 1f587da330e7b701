//! The GPU preprocessor on CUDA: pinned staging, streams, the kernels launched per batch.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use spotbatch_proto::manifest::{Color, Layout};

use super::kernels::{coefficients, kernels_ptx, Coefficients};
use super::{GpuError, TensorSpec};
use crate::engine::Float;
use crate::preprocess::image::Pixels;

/// A CUDA call's error, naming what was being done.
fn gpu_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> GpuError {
    move |e| GpuError::Driver {
        what,
        message: e.to_string(),
    }
}

/// Device and pinned buffers for one batch in flight, with its own stream.
struct Slot {
    stream: Arc<CudaStream>,
    host: cudarc::driver::PinnedHostSlice<u8>,
    src: CudaSlice<u8>,
    tmp: CudaSlice<u8>,
    meta: CudaSlice<u8>,
    out: CudaSlice<u8>,
}

/// A batch whose input tensor is being written on the GPU.
#[derive(Debug)]
pub struct Prepared {
    slot: usize,
    /// Recorded on the slot's stream after the batch's copies and kernels.
    done: CudaEvent,
}

impl Prepared {
    /// Waits until the batch's tensor is written. Needs no hold on the [`GpuPreprocessor`], so
    /// the model's thread waits for this batch while the next one is being packed.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.done
            .synchronize()
            .map_err(gpu_err("preprocessing a batch"))
    }
}

/// Preprocesses batches on one GPU; several slots (each with a stream and buffers) keep the next
/// batch's copy and kernels running while the model runs the previous one.
pub struct GpuPreprocessor {
    ctx: Arc<CudaContext>,
    vertical: CudaFunction,
    horizontal: CudaFunction,
    spec: TensorSpec,
    slots: Vec<Slot>,
    next: usize,
    cache: HashMap<(u32, u32), (Coefficients, Coefficients)>,
}

impl std::fmt::Debug for GpuPreprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPreprocessor")
            .field("gpu", &self.ctx.ordinal())
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Batches in flight per GPU preprocessor.
const SLOTS: usize = 3;

impl GpuPreprocessor {
    /// Compiles the kernels for GPU `gpu` and sets up the slots.
    pub fn new(gpu: u32, spec: TensorSpec) -> Result<Self, GpuError> {
        std::panic::catch_unwind(AssertUnwindSafe(|| Self::new_inner(gpu, spec))).unwrap_or_else(
            |_| {
                Err(GpuError::Unavailable(
                    "GPU preprocessing: the CUDA libraries could not be loaded".into(),
                ))
            },
        )
    }

    fn new_inner(gpu: u32, spec: TensorSpec) -> Result<Self, GpuError> {
        let ptx = kernels_ptx()?;
        let ctx = CudaContext::new(gpu as usize).map_err(gpu_err("opening the GPU"))?;
        // Buffers are synchronised by hand (a slot's stream is waited on before reuse).
        // SAFETY: no cudarc-managed buffer is shared between streams without that wait.
        unsafe { ctx.disable_event_tracking() };
        let module = ctx
            .load_module(ptx)
            .map_err(gpu_err("loading the kernels"))?;
        let vertical = module
            .load_function("sb_vertical")
            .map_err(gpu_err("sb_vertical"))?;
        let horizontal = module
            .load_function("sb_horizontal")
            .map_err(gpu_err("sb_horizontal"))?;
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            let stream = ctx.new_stream().map_err(gpu_err("creating a stream"))?;
            slots.push(Slot {
                // SAFETY: pinned memory is written before it is read.
                host: unsafe { ctx.alloc_pinned::<u8>(1 << 20) }
                    .map_err(gpu_err("pinned memory"))?,
                src: stream
                    .alloc_zeros::<u8>(1 << 20)
                    .map_err(gpu_err("device memory"))?,
                tmp: stream
                    .alloc_zeros::<u8>(1 << 20)
                    .map_err(gpu_err("device memory"))?,
                meta: stream
                    .alloc_zeros::<u8>(1 << 16)
                    .map_err(gpu_err("device memory"))?,
                out: stream
                    .alloc_zeros::<u8>(1 << 20)
                    .map_err(gpu_err("device memory"))?,
                stream,
            });
        }
        Ok(Self {
            ctx,
            vertical,
            horizontal,
            spec,
            slots,
            next: 0,
            cache: HashMap::new(),
        })
    }

    /// The GPU it runs on.
    pub fn gpu(&self) -> usize {
        self.ctx.ordinal()
    }

    /// Starts preprocessing `images` into a batch tensor of `run_n` items (items past the images
    /// are zeros: padding for fixed-batch models), at device address `into` (a tensor of that
    /// size on this GPU, e.g. from ONNX Runtime's allocator), else in a buffer of its own (read
    /// back with [`Self::download`]). Returns at once; [`Self::wait`] before use.
    pub fn prepare(
        &mut self,
        images: &[&Pixels],
        run_n: usize,
        into: Option<u64>,
    ) -> Result<Prepared, GpuError> {
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the GPU to this thread"))?;
        let (w, h) = (self.spec.width, self.spec.height);
        let cs = self.spec.channels();
        let slot_idx = self.next;
        self.next = (self.next + 1) % self.slots.len();
        // Coefficient tables, once per source size in this batch.
        let mut tab: Vec<i32> = Vec::new();
        let mut placed: HashMap<(u32, u32), [i32; 8]> = HashMap::new();
        let mut offs: Vec<i64> = Vec::with_capacity(images.len() * 2);
        let mut desc: Vec<i32> = Vec::with_capacity(images.len() * 10);
        let (mut src_len, mut tmp_len) = (0usize, 0usize);
        let mut max_w = 0u32;
        for img in images {
            if img.rgb.len() != img.width as usize * img.height as usize * 3 {
                return Err(GpuError::Input(
                    "pixel buffer does not match its size".into(),
                ));
            }
            let key = (img.width, img.height);
            let entry = match placed.get(&key) {
                Some(e) => *e,
                None => {
                    let (v, hz) = self.cache.entry(key).or_insert_with(|| {
                        (coefficients(img.height, h), coefficients(img.width, w))
                    });
                    let mut e = [0i32; 8];
                    for (i, c) in [&*v, &*hz].into_iter().enumerate() {
                        e[i * 4] = tab.len() as i32;
                        tab.extend(c.bounds.iter().flat_map(|(s, n)| [*s as i32, *n as i32]));
                        e[i * 4 + 1] = tab.len() as i32;
                        tab.extend(c.values.iter().map(|v| i32::from(*v)));
                        e[i * 4 + 2] = c.window as i32;
                        e[i * 4 + 3] = i32::from(c.precision);
                    }
                    placed.insert(key, e);
                    e
                }
            };
            offs.push(src_len as i64);
            offs.push(tmp_len as i64);
            desc.push(img.width as i32);
            desc.push(img.height as i32);
            desc.extend_from_slice(&entry);
            src_len += img.rgb.len();
            tmp_len += img.width as usize * h as usize * cs;
            max_w = max_w.max(img.width);
        }
        // Host staging: pixels, then offsets, descriptors and tables (8-byte aligned).
        let meta_at = src_len.next_multiple_of(8);
        let meta_len = offs.len() * 8 + (desc.len() + tab.len()) * 4;
        let host_len = meta_at + meta_len;
        let out_len = run_n * self.spec.item_len() * self.spec.float.size();
        let ctx = Arc::clone(&self.ctx);
        let slot = &mut self.slots[slot_idx];
        slot.stream
            .synchronize()
            .map_err(gpu_err("waiting for an earlier batch"))?;
        if slot.host.len() < host_len {
            // SAFETY: written below before any read.
            slot.host = unsafe { ctx.alloc_pinned::<u8>(host_len.next_power_of_two()) }
                .map_err(gpu_err("pinned memory"))?;
        }
        grow(&slot.stream, &mut slot.src, src_len)?;
        grow(&slot.stream, &mut slot.tmp, tmp_len)?;
        grow(&slot.stream, &mut slot.meta, meta_len)?;
        if into.is_none() {
            grow(&slot.stream, &mut slot.out, out_len)?;
        }
        {
            let host = slot.host.as_mut_slice().map_err(gpu_err("pinned memory"))?;
            let mut at = 0;
            for img in images {
                host[at..at + img.rgb.len()].copy_from_slice(&img.rgb);
                at += img.rgb.len();
            }
            let mut at = meta_at;
            for v in &offs {
                host[at..at + 8].copy_from_slice(&v.to_ne_bytes());
                at += 8;
            }
            for v in desc.iter().chain(&tab) {
                host[at..at + 4].copy_from_slice(&v.to_ne_bytes());
                at += 4;
            }
        }
        let stream = Arc::clone(&slot.stream);
        let cu = stream.cu_stream();
        let (src_ptr, _g1) = cudarc::driver::DevicePtr::device_ptr(&slot.src, &stream);
        let (tmp_ptr, _g2) = cudarc::driver::DevicePtr::device_ptr(&slot.tmp, &stream);
        let (meta_ptr, _g3) = cudarc::driver::DevicePtr::device_ptr(&slot.meta, &stream);
        let (own_out, _g4) = cudarc::driver::DevicePtr::device_ptr(&slot.out, &stream);
        let out_ptr = into.unwrap_or(own_out);
        let host = slot.host.as_slice().map_err(gpu_err("pinned memory"))?;
        // SAFETY: the device buffers are at least as long as what is copied or written (grown
        // above); the pinned buffer is not touched again until this slot's stream is waited on.
        unsafe {
            use cudarc::driver::result::{memcpy_htod_async, memset_d8_async};
            memcpy_htod_async(src_ptr, &host[..src_len], cu).map_err(gpu_err("copying pixels"))?;
            memcpy_htod_async(meta_ptr, &host[meta_at..host_len], cu)
                .map_err(gpu_err("copying tables"))?;
            if run_n > images.len() {
                memset_d8_async(out_ptr, 0, out_len, cu).map_err(gpu_err("zeroing padding"))?;
            }
        }
        if !images.is_empty() {
            let offs_ptr = meta_ptr;
            let desc_ptr = meta_ptr + (offs.len() * 8) as u64;
            let tab_ptr = desc_ptr + (desc.len() * 4) as u64;
            let n = images.len() as u32;
            let (dst_h, dst_w, cs_i) = (h as i32, w as i32, cs as i32);
            let mut v = stream.launch_builder(&self.vertical);
            v.arg(&src_ptr)
                .arg(&tmp_ptr)
                .arg(&offs_ptr)
                .arg(&desc_ptr)
                .arg(&tab_ptr);
            v.arg(&dst_h).arg(&cs_i);
            let cfg = LaunchConfig {
                grid_dim: (max_w.div_ceil(128), h, n),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's parameters in order and type.
            unsafe { v.launch(cfg) }.map_err(gpu_err("vertical pass"))?;
            let spec = &self.spec;
            let ch = |v: &[f32], i: usize| v.get(i).copied().unwrap_or(0.0);
            let (nhwc, bgr) = (
                i32::from(spec.layout == Layout::Nhwc),
                i32::from(spec.color == Color::Bgr),
            );
            let half = i32::from(spec.float == Float::F16);
            let item_len = spec.item_len() as i64;
            let (m0, m1, m2) = (ch(&spec.mul, 0), ch(&spec.mul, 1), ch(&spec.mul, 2));
            let (a0, a1, a2) = (ch(&spec.add, 0), ch(&spec.add, 1), ch(&spec.add, 2));
            let mut hz = stream.launch_builder(&self.horizontal);
            hz.arg(&tmp_ptr)
                .arg(&out_ptr)
                .arg(&offs_ptr)
                .arg(&desc_ptr)
                .arg(&tab_ptr);
            hz.arg(&dst_w)
                .arg(&dst_h)
                .arg(&cs_i)
                .arg(&nhwc)
                .arg(&bgr)
                .arg(&half);
            hz.arg(&item_len)
                .arg(&m0)
                .arg(&m1)
                .arg(&m2)
                .arg(&a0)
                .arg(&a1)
                .arg(&a2);
            let cfg = LaunchConfig {
                grid_dim: (w.div_ceil(128), h, n),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above.
            unsafe { hz.launch(cfg) }.map_err(gpu_err("horizontal pass"))?;
        }
        let done = stream
            .record_event(None)
            .map_err(gpu_err("marking the batch's end"))?;
        Ok(Prepared {
            slot: slot_idx,
            done,
        })
    }

    /// Copies a prepared batch's tensor back as float32 values (for checks against the CPU).
    pub fn download(&self, p: &Prepared, values: usize) -> Result<Vec<f32>, GpuError> {
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the GPU to this thread"))?;
        let slot = &self.slots[p.slot];
        slot.stream
            .synchronize()
            .map_err(gpu_err("preprocessing a batch"))?;
        let bytes: Vec<u8> = slot
            .stream
            .clone_dtoh(&slot.out.slice(..values * self.spec.float.size()))
            .map_err(gpu_err("copying the tensor back"))?;
        Ok(match self.spec.float {
            Float::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Float::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_ne_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

fn grow(stream: &Arc<CudaStream>, buf: &mut CudaSlice<u8>, len: usize) -> Result<(), GpuError> {
    if buf.len() < len {
        *buf = stream
            .alloc_zeros::<u8>(len.next_power_of_two())
            .map_err(gpu_err("device memory"))?;
    }
    Ok(())
}
