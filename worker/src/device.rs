//! The machine's GPUs, as the CUDA driver and NVML see them: how many there are (or why none can
//! be used), and their utilisation and memory as metrics. Everything is loaded at run time, so the
//! worker builds and runs on machines without CUDA.

use std::time::Duration;

/// Why no GPU can be used here, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpuUnavailable(pub String);

/// How many GPUs the CUDA driver sees; an error says why none can be used (no driver library,
/// driver failure).
#[cfg(not(feature = "gpu"))]
pub fn cuda_device_count() -> Result<usize, GpuUnavailable> {
    Err(GpuUnavailable(
        "this build has no GPU support (built without the gpu feature)".into(),
    ))
}

/// How many GPUs the CUDA driver sees; an error says why none can be used (no driver library,
/// driver failure).
#[cfg(feature = "gpu")]
pub fn cuda_device_count() -> Result<usize, GpuUnavailable> {
    // SAFETY: only tries to open the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(GpuUnavailable(
            "no CUDA driver (libcuda.so) on this machine".into(),
        ));
    }
    std::panic::catch_unwind(|| {
        cudarc::driver::result::init()
            .map_err(|e| GpuUnavailable(format!("the CUDA driver failed to start: {e}")))?;
        cudarc::driver::CudaContext::device_count()
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|e| GpuUnavailable(format!("the CUDA driver cannot count GPUs: {e}")))
    })
    .unwrap_or_else(|_| {
        Err(GpuUnavailable(
            "the CUDA driver library could not be used".into(),
        ))
    })
}

/// Publishes GPU utilisation and memory from NVML every `every`, when NVML is present; returns
/// whether it is (without NVML the worker says so once and carries on).
#[cfg(not(feature = "gpu"))]
pub fn spawn_nvml_metrics(_every: Duration) -> bool {
    false
}

/// Publishes GPU utilisation and memory from NVML every `every`, when NVML is present; returns
/// whether it is (without NVML the worker says so once and carries on).
#[cfg(feature = "gpu")]
pub fn spawn_nvml_metrics(every: Duration) -> bool {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "NVML not available: no GPU utilisation metrics");
            return false;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("nvml".into())
        .spawn(move || loop {
            let count = nvml.device_count().unwrap_or(0);
            for i in 0..count {
                let Ok(dev) = nvml.device_by_index(i) else {
                    continue;
                };
                let gpu = i.to_string();
                if let Ok(u) = dev.utilization_rates() {
                    metrics::gauge!("spotbatch_gpu_utilization_ratio", "gpu" => gpu.clone())
                        .set(f64::from(u.gpu) / 100.0);
                }
                if let Ok(m) = dev.memory_info() {
                    metrics::gauge!("spotbatch_gpu_memory_used_bytes", "gpu" => gpu.clone())
                        .set(m.used as f64);
                    metrics::gauge!("spotbatch_gpu_memory_total_bytes", "gpu" => gpu)
                        .set(m.total as f64);
                }
            }
            std::thread::sleep(every);
        });
    spawned.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_here_is_an_error_not_a_panic() {
        // On a machine with a GPU this returns the count; either way it must not panic.
        match cuda_device_count() {
            Ok(n) => eprintln!("CUDA sees {n} GPU(s)"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
