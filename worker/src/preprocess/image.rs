//! Images: decode one image on the CPU, refusing what is not a usable image (with a one-line
//! reason that becomes the item's error row), then convert colour, resize, normalise and lay it
//! out as the model's input — or, for the GPU path, hand over the decoded pixels (the GPU resizes
//! and normalises them, and must match this reference bit for bit).

use std::io::Cursor;

use image::{DynamicImage, ImageReader, Limits};
use spotbatch_proto::manifest::{Color, Layout};
use spotbatch_proto::Manifest;

use spotbatch_proto::manifest::one_line;

use super::{ModelInput, Preprocessor};
use crate::error::ItemError;
use crate::model::InputPlan;
use crate::source::Payload;

/// One decoded image: interleaved RGB bytes at the image's own size.
#[derive(Debug, Clone)]
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

/// What the image preprocessor hands the model's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageTarget {
    /// The finished input values (the CPU path).
    Tensor,
    /// The decoded pixels at the image's own size (the GPU resizes and normalises them).
    Pixels,
}

/// Turns encoded image bytes into one item's input values (or its decoded pixels).
#[derive(Debug, Clone)]
pub struct ImagePreprocessor {
    /// Target width.
    pub width: u32,
    /// Target height.
    pub height: u32,
    resize: bool,
    /// Colour conversion.
    pub color: Color,
    /// Tensor layout.
    pub layout: Layout,
    /// Per channel: value = byte * mul[c] + add[c]  (scale, mean and std folded together).
    pub mul: Vec<f32>,
    /// Per channel offset (see `mul`).
    pub add: Vec<f32>,
    max_pixels: u64,
    target: ImageTarget,
}

impl Preprocessor for ImagePreprocessor {
    fn prepare(&self, payload: &Payload) -> Result<ModelInput, ItemError> {
        let Payload::Object(bytes) = payload else {
            return Err(ItemError::Input(
                "an image job got a record (set preprocess.kind = \"text\")".into(),
            ));
        };
        match self.target {
            ImageTarget::Tensor => {
                let mut values = Vec::with_capacity(self.item_len());
                self.process(bytes, &mut values)?;
                Ok(ModelInput::Values(values))
            }
            ImageTarget::Pixels => self.decode_pixels(bytes).map(ModelInput::Pixels),
        }
    }
}

impl ImagePreprocessor {
    /// The preprocessor for a manifest and the model's input plan.
    pub fn new(m: &Manifest, plan: &InputPlan) -> Self {
        let p = &m.raw.preprocess;
        // (x * scale - mean) / std  ==  x * (scale / std) + (-mean / std)
        let mul = m.std.iter().map(|s| p.scale / s).collect();
        let add = m.mean.iter().zip(&m.std).map(|(mu, s)| -mu / s).collect();
        Self {
            width: plan.width,
            height: plan.height,
            resize: p.resize.is_some(),
            color: p.color,
            layout: p.layout,
            mul,
            add,
            max_pixels: p.max_pixels,
            target: ImageTarget::Tensor,
        }
    }

    /// The same, handing over decoded pixels for the GPU path instead of finished values.
    pub fn with_target(mut self, target: ImageTarget) -> Self {
        self.target = target;
        self
    }

    /// Values per item.
    pub fn item_len(&self) -> usize {
        self.color.channels() * self.width as usize * self.height as usize
    }

    /// Decodes `bytes` and appends one item's values to `out`. On error `out` is unchanged.
    pub fn process(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), ItemError> {
        let pixels = self.decode(bytes)?;
        let start = out.len();
        out.resize(start + self.item_len(), 0.0);
        self.write_tensor(&pixels, &mut out[start..]);
        Ok(())
    }

    /// Decodes for the GPU path: the same checks as [`Self::process`], then RGB pixels at the
    /// image's own size (the GPU converts colour and resizes).
    pub fn decode_pixels(&self, bytes: &[u8]) -> Result<Pixels, ItemError> {
        let img = self.decode_checked(bytes)?.into_rgb8();
        Ok(Pixels {
            width: img.width(),
            height: img.height(),
            rgb: img.into_raw(),
        })
    }

    /// Decodes and converts to the target size and colour: interleaved bytes, `channels` per pixel.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, ItemError> {
        let img = self.decode_checked(bytes)?;
        match self.color {
            Color::Gray => self.resized(to_gray(img)),
            Color::Rgb | Color::Bgr => self.resized(DynamicImage::ImageRgb8(img.into_rgb8())),
        }
    }

    /// Decodes with the size checks (pixel limit, model size when not resizing).
    fn decode_checked(&self, bytes: &[u8]) -> Result<DynamicImage, ItemError> {
        self.decode_inner(bytes).map_err(ItemError::Input)
    }

    fn decode_inner(&self, bytes: &[u8]) -> Result<DynamicImage, String> {
        if bytes.is_empty() {
            return Err("empty file".into());
        }
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}"))?;
        if reader.format().is_none() {
            return Err("not an image (unrecognised format)".into());
        }
        let (w, h) = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}"))?
            .into_dimensions()
            .map_err(|e| format!("corrupt image header: {}", one_line(&e.to_string())))?;
        let pixels = u64::from(w) * u64::from(h);
        if pixels > self.max_pixels {
            return Err(format!(
                "image is {w}×{h} ({pixels} pixels), over preprocess.max_pixels = {}",
                self.max_pixels
            ));
        }
        if pixels == 0 {
            return Err(format!("image is {w}×{h}: no pixels"));
        }
        let mut reader = reader;
        let mut limits = Limits::default();
        limits.max_image_width = Some(w);
        limits.max_image_height = Some(h);
        // Room for the decoded image at up to 16 bytes per pixel, plus the decoder's own buffers.
        limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20));
        reader.limits(limits);
        let img = reader
            .decode()
            .map_err(|e| format!("corrupt or truncated image: {}", one_line(&e.to_string())))?;
        if !self.resize && (img.width(), img.height()) != (self.width, self.height) {
            return Err(format!(
                "image is {}×{}, the model takes {}×{} (set preprocess.resize to resize)",
                img.width(),
                img.height(),
                self.width,
                self.height
            ));
        }
        Ok(img)
    }

    /// Resizes interleaved 8-bit pixels (gray or RGB) to the target size: a SIMD bilinear
    /// convolution that, like Pillow's `BILINEAR`, widens its support when downscaling.
    fn resized(&self, img: DynamicImage) -> Result<Vec<u8>, ItemError> {
        use fast_image_resize as fir;
        let (w, h) = (img.width(), img.height());
        if (w, h) == (self.width, self.height) {
            return Ok(img.into_bytes());
        }
        let pixel = if self.color == Color::Gray {
            fir::PixelType::U8
        } else {
            fir::PixelType::U8x3
        };
        let src = fir::images::Image::from_vec_u8(w, h, img.into_bytes(), pixel)
            .map_err(|e| ItemError::Input(format!("cannot resize: {e}")))?;
        let mut dst = fir::images::Image::new(self.width, self.height, pixel);
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        thread_local! {
            static RESIZER: std::cell::RefCell<fast_image_resize::Resizer> = std::cell::RefCell::new(fast_image_resize::Resizer::new());
        }
        RESIZER
            .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
            .map_err(|e| ItemError::Input(format!("cannot resize: {e}")))?;
        Ok(dst.into_vec())
    }

    /// Normalises interleaved pixels into the tensor layout.
    pub fn write_tensor(&self, pixels: &[u8], out: &mut [f32]) {
        let c = self.color.channels();
        let hw = self.width as usize * self.height as usize;
        // Source channel for each tensor channel: BGR reverses RGB.
        let src = |ch: usize| if self.color == Color::Bgr { 2 - ch } else { ch };
        match self.layout {
            Layout::Nchw => {
                for ch in 0..c {
                    let (m, a, s) = (self.mul[ch], self.add[ch], src(ch));
                    for (o, px) in out[ch * hw..(ch + 1) * hw]
                        .iter_mut()
                        .zip(pixels.chunks_exact(c))
                    {
                        *o = f32::from(px[s]) * m + a;
                    }
                }
            }
            Layout::Nhwc => {
                for (o, px) in out.chunks_exact_mut(c).zip(pixels.chunks_exact(c)) {
                    for ch in 0..c {
                        o[ch] = f32::from(px[src(ch)]) * self.mul[ch] + self.add[ch];
                    }
                }
            }
        }
    }
}

/// Luma as Pillow's `convert("L")` computes it (ITU-R 601-2), so models trained on Pillow input see
/// the same values.
fn to_gray(img: DynamicImage) -> DynamicImage {
    if let DynamicImage::ImageLuma8(g) = img {
        return DynamicImage::ImageLuma8(g);
    }
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    let luma: Vec<u8> = rgb
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16)
                as u8
        })
        .collect();
    match image::GrayImage::from_raw(w, h, luma) {
        Some(g) => DynamicImage::ImageLuma8(g),
        None => DynamicImage::new_luma8(w, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn prep(extra: &str, plan: (u32, u32)) -> ImagePreprocessor {
        let text = format!(
            "name = \"t\"\n[input]\nuri = \"i\"\n[model]\nuri = \"m.onnx\"\n[output]\nuri = \"o\"\n[preprocess]\n{extra}\n"
        );
        let m = Manifest::parse(&text, Path::new("/x")).unwrap();
        let ip = InputPlan {
            width: plan.0,
            height: plan.1,
            item_shape: vec![],
            item_len: 0,
            fixed_batch: None,
        };
        ImagePreprocessor::new(&m, &ip)
    }

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    }

    #[test]
    fn normalises_in_nchw_and_nhwc_with_bgr() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([10, 20, 30])
            } else {
                image::Rgb([40, 50, 60])
            }
        }));
        let bytes = png(img);
        let p = prep("color = \"rgb\"\nlayout = \"nchw\"\nscale = 1.0\nmean = [0.0, 10.0, 20.0]\nstd = [1.0, 2.0, 4.0]", (2, 1));
        let mut out = Vec::new();
        p.process(&bytes, &mut out).unwrap();
        assert_eq!(out, vec![10.0, 40.0, 5.0, 20.0, 2.5, 10.0]);
        let p = prep("color = \"bgr\"\nlayout = \"nhwc\"\nscale = 1.0", (2, 1));
        let mut out = Vec::new();
        p.process(&bytes, &mut out).unwrap();
        assert_eq!(out, vec![30.0, 20.0, 10.0, 60.0, 50.0, 40.0]);
    }

    #[test]
    fn gray_matches_pillow_luma() {
        let bytes = png(DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            1,
            1,
            image::Rgb([200, 100, 50]),
        )));
        let p = prep("color = \"gray\"\nscale = 1.0", (1, 1));
        let mut out = Vec::new();
        p.process(&bytes, &mut out).unwrap();
        // Pillow: (200*19595 + 100*38470 + 50*7471 + 32768) >> 16 = 124
        assert_eq!(out, vec![124.0]);
    }

    #[test]
    fn bad_inputs_give_reasons_and_leave_out_untouched() {
        let p = prep("color = \"gray\"", (8, 8));
        let mut out = vec![1.0];
        let reason = |b: &[u8], out: &mut Vec<f32>| p.process(b, out).unwrap_err().to_string();
        assert_eq!(reason(b"", &mut out), "empty file");
        assert_eq!(
            reason(b"hello, I am text", &mut out),
            "not an image (unrecognised format)"
        );
        let good = png(DynamicImage::new_luma8(8, 8));
        assert!(reason(&good[..good.len() / 2], &mut out).starts_with("corrupt or truncated image"));
        let wrong = png(DynamicImage::new_luma8(9, 8));
        assert!(reason(&wrong, &mut out).contains("the model takes 8×8"));
        assert_eq!(out, vec![1.0]);
    }

    #[test]
    fn resizes_when_asked() {
        let p = prep("color = \"gray\"\nresize = [4, 2]\nscale = 1.0", (4, 2));
        let mut out = Vec::new();
        p.process(
            &png(DynamicImage::ImageLuma8(image::GrayImage::from_pixel(
                16,
                8,
                image::Luma([77]),
            ))),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![77.0; 8]);
    }

    #[test]
    fn passes_the_preprocessor_checks_on_both_targets() {
        let good = png(DynamicImage::new_luma8(8, 8));
        let truncated = &good[..good.len() / 2];
        let bad: [&[u8]; 3] = [b"", b"hello, I am text", truncated];
        let p = prep("color = \"gray\"", (8, 8));
        crate::preprocess::conformance::check(&p, &good, 64, &bad);
        let p = prep("color = \"gray\"", (8, 8)).with_target(ImageTarget::Pixels);
        crate::preprocess::conformance::check(&p, &good, 8 * 8 * 3, &bad);
    }
}
