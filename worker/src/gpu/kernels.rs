//! The GPU preprocessing's arithmetic and kernels: the resampling weights (fast_image_resize's
//! bilinear convolution in its 16-bit fixed point, so the GPU's bytes are the CPU reference's),
//! the two CUDA kernels that apply them (vertical pass, then horizontal pass with colour, layout,
//! normalisation and float16/32 conversion), and compiling those with NVRTC once per process.

use std::sync::OnceLock;

use super::GpuError;

/// Resampling weights for one axis, as fast_image_resize computes them for its bilinear
/// convolution and turns them into 16-bit fixed point (`Normalizer16`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coefficients {
    /// Per output pixel: first input pixel and how many are used.
    pub bounds: Vec<(u32, u32)>,
    /// Per output pixel, `window` weights (the first `size` are used).
    pub values: Vec<i16>,
    /// Weights per output pixel.
    pub window: usize,
    /// Fixed-point precision in bits.
    pub precision: u8,
}

/// Bilinear convolution weights from `in_size` to `out_size` pixels, the filter's support widened
/// by the scale when downscaling; identical to fast_image_resize 6's `precompute_coefficients`
/// followed by `Normalizer16::new`.
pub fn coefficients(in_size: u32, out_size: u32) -> Coefficients {
    const PRECISION_BITS: u8 = 32 - 8 - 2;
    const MAX_COEFFS_PRECISION: u8 = 16 - 1;
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    let scale = f64::from(in_size) / f64::from(out_size.max(1));
    let filter_scale = scale.max(1.0);
    let radius = filter_scale; // bilinear support 1.0
    let window = radius.ceil() as usize * 2 + 1;
    let recip = 1.0 / filter_scale;
    let mut coeffs: Vec<f64> = Vec::with_capacity(window * out_size as usize);
    let mut bounds = Vec::with_capacity(out_size as usize);
    for out_x in 0..out_size {
        let in_center = (f64::from(out_x) + 0.5) * scale;
        let x_min = (in_center - radius).floor().max(0.) as u32;
        let x_max = (in_center + radius).ceil().min(f64::from(in_size)) as u32;
        let cur = coeffs.len();
        let mut ww = 0.0;
        let center = in_center - 0.5;
        let mut start = x_min;
        let mut end = x_max;
        for x in x_min..x_max {
            let w = filter((f64::from(x) - center) * recip);
            if x == start && w == 0. {
                start += 1;
            } else {
                coeffs.push(w);
                ww += w;
            }
        }
        for &c in coeffs.iter().rev() {
            if end <= start || c != 0. {
                break;
            }
            end -= 1;
        }
        if ww != 0.0 {
            coeffs[cur..].iter_mut().for_each(|w| *w /= ww);
        }
        coeffs.resize(cur + window, 0.);
        bounds.push((start, end - start));
    }
    let max_weight = coeffs.iter().copied().fold(0.0f64, f64::max);
    let mut precision = 0u8;
    for p in 0..PRECISION_BITS {
        precision = p;
        let next = (max_weight * f64::from(1u32 << (p + 1))).round() as i32;
        if next >= (1 << MAX_COEFFS_PRECISION) {
            break;
        }
    }
    let scale = f64::from(1u32 << precision);
    let values = coeffs.iter().map(|v| (v * scale).round() as i16).collect();
    Coefficients {
        bounds,
        values,
        window,
        precision,
    }
}

/// The kernels, compiled at run time with NVRTC (no CUDA headers needed).
const KERNELS: &str = r#"
typedef unsigned char u8;
__device__ __forceinline__ int clip8(int v, int prec) {
    v >>= prec;
    return v < 0 ? 0 : (v > 255 ? 255 : v);
}
__device__ __forceinline__ float mul_rn(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float add_rn(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// desc per image: w, h, vbounds, vcoefs, vwindow, vprec, hbounds, hcoefs, hwindow, hprec
// offs per image: source byte offset, intermediate byte offset
extern "C" __global__ void sb_vertical(const u8* src, u8* tmp, const long long* offs,
                                       const int* desc, const int* tab, int dst_h, int cs) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    int img = blockIdx.z;
    const int* d = desc + img * 10;
    int w = d[0];
    if (x >= w || y >= dst_h) return;
    const u8* s = src + offs[img * 2];
    u8* t = tmp + offs[img * 2 + 1];
    int start = tab[d[2] + 2 * y];
    int size = tab[d[2] + 2 * y + 1];
    const int* k = tab + d[3] + y * d[4];
    int prec = d[5];
    int init = 1 << (prec - 1);
    if (cs == 1) {
        int ss = init;
        for (int i = 0; i < size; i++) {
            const u8* p = s + ((long long)(start + i) * w + x) * 3;
            int l = (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
            ss += l * k[i];
        }
        t[(long long)y * w + x] = (u8)clip8(ss, prec);
    } else {
        int s0 = init, s1 = init, s2 = init;
        for (int i = 0; i < size; i++) {
            const u8* p = s + ((long long)(start + i) * w + x) * 3;
            s0 += p[0] * k[i];
            s1 += p[1] * k[i];
            s2 += p[2] * k[i];
        }
        u8* o = t + ((long long)y * w + x) * 3;
        o[0] = (u8)clip8(s0, prec);
        o[1] = (u8)clip8(s1, prec);
        o[2] = (u8)clip8(s2, prec);
    }
}
extern "C" __global__ void sb_horizontal(const u8* tmp, void* out, const long long* offs,
                                         const int* desc, const int* tab, int dst_w, int dst_h,
                                         int cs, int nhwc, int bgr, int half_out,
                                         long long item_len, float m0, float m1, float m2,
                                         float a0, float a1, float a2) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    int img = blockIdx.z;
    if (x >= dst_w || y >= dst_h) return;
    const int* d = desc + img * 10;
    int w = d[0];
    const u8* t = tmp + offs[img * 2 + 1];
    int start = tab[d[6] + 2 * x];
    int size = tab[d[6] + 2 * x + 1];
    const int* k = tab + d[7] + x * d[8];
    int prec = d[9];
    int init = 1 << (prec - 1);
    int ss[3] = {init, init, init};
    for (int i = 0; i < size; i++) {
        const u8* p = t + ((long long)y * w + start + i) * cs;
        for (int c = 0; c < cs; c++) ss[c] += p[c] * k[i];
    }
    float mul[3] = {m0, m1, m2};
    float add[3] = {a0, a1, a2};
    long long base = (long long)img * item_len;
    long long hw = (long long)dst_w * dst_h;
    for (int ch = 0; ch < cs; ch++) {
        int sc = (bgr && cs == 3) ? 2 - ch : ch;
        float v = (float)clip8(ss[sc], prec);
        // no fused multiply-add: the CPU reference rounds the product, then the sum
        float val = add_rn(mul_rn(v, mul[ch]), add[ch]);
        long long idx = base + (nhwc ? ((long long)y * dst_w + x) * cs + ch
                                     : (long long)ch * hw + (long long)y * dst_w + x);
        if (half_out) ((unsigned short*)out)[idx] = f2h(val);
        else ((float*)out)[idx] = val;
    }
}
"#;

/// The kernels as NVRTC compiled them: once per process, shared by every GPU preprocessor.
static KERNELS_PTX: OnceLock<Result<cudarc::nvrtc::Ptx, GpuError>> = OnceLock::new();

/// The compiled kernels; compiles them on first use (or waits for [`compile_kernels_early`]'s
/// compile to finish). Needs NVRTC, not a GPU.
pub fn kernels_ptx() -> Result<cudarc::nvrtc::Ptx, GpuError> {
    KERNELS_PTX
        .get_or_init(|| {
            // SAFETY: only tries to open the library.
            if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Err(GpuError::Unavailable(
                    "GPU preprocessing needs NVRTC (libnvrtc.so from CUDA 13) on LD_LIBRARY_PATH"
                        .into(),
                ));
            }
            let t0 = std::time::Instant::now();
            let ptx = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx(KERNELS))
                .map_err(|_| GpuError::Compile("NVRTC could not be loaded".into()))?
                .map_err(|e| {
                    GpuError::Compile(format!("NVRTC could not compile the kernels: {e}"))
                })?;
            tracing::debug!(
                ms = t0.elapsed().as_millis() as u64,
                "NVRTC compiled the GPU kernels"
            );
            Ok(ptx)
        })
        .clone()
}

/// Starts compiling the kernels on a thread of their own when this machine has a CUDA driver,
/// so that the compile (a tenth of a second or more) overlaps loading the model instead of
/// following it. [`kernels_ptx`] then waits for it.
pub fn compile_kernels_early() {
    // SAFETY: only tries to open the driver library.
    if KERNELS_PTX.get().is_some() || !unsafe { cudarc::driver::sys::is_culib_present() } {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("nvrtc".into())
        .spawn(|| drop(kernels_ptx()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles: NVRTC needs no GPU, so this runs wherever libnvrtc is found
    /// (`make test` installs it and sets `SPOTBATCH_TEST_NVRTC=1`, which makes it required).
    #[test]
    fn the_kernels_compile_with_nvrtc() {
        let required = std::env::var_os("SPOTBATCH_TEST_NVRTC").is_some();
        // SAFETY: only tries to open the library.
        if !required && !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!(
                "SKIPPED the_kernels_compile_with_nvrtc: no libnvrtc on LD_LIBRARY_PATH \
                 (make test provides one)"
            );
            return;
        }
        let ptx = kernels_ptx().expect("NVRTC compiles the kernels").to_src();
        for kernel in ["sb_vertical", "sb_horizontal"] {
            assert!(
                ptx.contains(&format!(".entry {kernel}(")),
                "{kernel} is not in the PTX:\n{ptx}"
            );
        }
        // Compiled once per process: the second call is the first's result.
        assert_eq!(kernels_ptx().map(|p| p.to_src()), Ok(ptx));
    }

    /// The coefficients drive fast_image_resize to the same bytes as its own resize: applying
    /// them the way the kernels do (vertical then horizontal, fixed point) reproduces the CPU path.
    fn resize_like_kernels(src: &[u8], w: u32, h: u32, dw: u32, dh: u32) -> Vec<u8> {
        let v = coefficients(h, dh);
        let hz = coefficients(w, dw);
        let clip = |s: i32, p: u8| (s >> p).clamp(0, 255) as u8;
        let mut tmp = vec![0u8; (w * dh * 3) as usize];
        for y in 0..dh as usize {
            let (start, size) = v.bounds[y];
            for x in 0..w as usize {
                for c in 0..3 {
                    let mut ss = 1i32 << (v.precision - 1);
                    for i in 0..size as usize {
                        let p = src[((start as usize + i) * w as usize + x) * 3 + c];
                        ss += i32::from(p) * i32::from(v.values[y * v.window + i]);
                    }
                    tmp[(y * w as usize + x) * 3 + c] = clip(ss, v.precision);
                }
            }
        }
        let mut out = vec![0u8; (dw * dh * 3) as usize];
        for y in 0..dh as usize {
            for x in 0..dw as usize {
                let (start, size) = hz.bounds[x];
                for c in 0..3 {
                    let mut ss = 1i32 << (hz.precision - 1);
                    for i in 0..size as usize {
                        let p = tmp[(y * w as usize + start as usize + i) * 3 + c];
                        ss += i32::from(p) * i32::from(hz.values[x * hz.window + i]);
                    }
                    out[(y * dw as usize + x) * 3 + c] = clip(ss, hz.precision);
                }
            }
        }
        out
    }

    fn fir_resize(src: &[u8], w: u32, h: u32, dw: u32, dh: u32) -> Vec<u8> {
        use fast_image_resize as fir;
        let s = fir::images::Image::from_vec_u8(w, h, src.to_vec(), fir::PixelType::U8x3).unwrap();
        let mut d = fir::images::Image::new(dw, dh, fir::PixelType::U8x3);
        let o = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        fir::Resizer::new().resize(&s, &mut d, &o).unwrap();
        d.into_vec()
    }

    #[test]
    fn kernel_arithmetic_matches_fast_image_resize_exactly() {
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        for (w, h, dw, dh) in [
            (256, 256, 224, 224),
            (640, 480, 224, 224),
            (100, 37, 224, 224),
            (224, 300, 224, 224),
            (8, 8, 8, 8),
            (1000, 3, 17, 5),
        ] {
            let src: Vec<u8> = (0..w * h * 3).map(|_| rnd()).collect();
            assert_eq!(
                resize_like_kernels(&src, w, h, dw, dh),
                fir_resize(&src, w, h, dw, dh),
                "{w}x{h} -> {dw}x{dh}"
            );
        }
    }

    #[test]
    fn identity_coefficients_copy_pixels() {
        let c = coefficients(5, 5);
        assert_eq!(c.bounds, (0..5).map(|i| (i, 1)).collect::<Vec<_>>());
        for i in 0..5 {
            assert_eq!(i32::from(c.values[i * c.window]), 1 << c.precision);
        }
    }
}
