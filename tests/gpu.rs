//! The GPU path. Without a GPU: an explicit `--device cuda` is a clear error, `auto` runs on the
//! CPU with a warning, and the GPU-only checks say they were skipped and why (run with
//! `--nocapture`, as `make test` does). With a GPU (and the onnxruntime-gpu library at
//! `ORT_DYLIB_PATH`): GPU preprocessing equals the CPU reference, and CUDA inference gives the same
//! rows as the CPU on the demo, batch by batch and item by item.
//!
//! Built with the `gpu` feature (a default one) only.
#![cfg(feature = "gpu")]

mod common;

use common::*;
use spotbatch_proto::Manifest;
use spotbatch_worker::device::cuda_device_count;
use spotbatch_worker::engine::Float;
use spotbatch_worker::gpu::{GpuPreprocessor, TensorSpec};
use spotbatch_worker::model::InputPlan;
use spotbatch_worker::preprocess::{ImagePreprocessor, Pixels};

/// Runs a spotbatch command to success within two minutes; on failure or timeout, panics with
/// the end of its output.
fn run_bounded(cmd: &mut std::process::Command) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let (o, e) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&o).expect("stdout file"))
        .stderr(std::fs::File::create(&e).expect("stderr file"))
        .spawn()
        .expect("spawn spotbatch");
    let status = wait_bounded(&mut child, std::time::Duration::from_secs(120));
    let stdout = std::fs::read(&o).unwrap_or_default();
    let stderr = std::fs::read(&e).unwrap_or_default();
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).to_string();
        s[s.len().saturating_sub(4000)..].to_string()
    };
    match status {
        Some(st) if st.success() => std::process::Output {
            status: st,
            stdout,
            stderr,
        },
        other => panic!(
            "spotbatch {}:\nstdout: {}\nstderr: {}",
            match other {
                Some(st) => format!("failed ({st})"),
                None => "did not finish within 120 s (killed)".into(),
            },
            tail(&stdout),
            tail(&stderr)
        ),
    }
}

/// Whether a GPU is here; prints why not, so a skipped check is visible in the test log.
fn gpu_or_skip(test: &str) -> bool {
    match cuda_device_count() {
        Ok(n) if n > 0 => true,
        Ok(_) => {
            eprintln!("SKIPPED {test}: the CUDA driver sees no GPU on this machine");
            false
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: no GPU ({e})");
            false
        }
    }
}

#[test]
fn explicit_cuda_without_a_gpu_is_an_error_not_a_fallback() {
    if cuda_device_count().is_ok_and(|n| n > 0) {
        eprintln!("SKIPPED explicit_cuda_without_a_gpu...: this machine has a GPU");
        return;
    }
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[]);
    let out = spotbatch()
        .args(["run", "--progress", "none", "--device", "cuda"])
        .arg(&manifest)
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("--device cuda:0") && stderr.contains("no GPU"),
        "stderr: {stderr}"
    );
    assert!(
        !job.path().join("out").exists() || job.rows().is_empty(),
        "nothing may run"
    );
    // The same request in the manifest fails the job's shards with the reason, not silently on
    // the CPU.
    let manifest = job.manifest(&[("batch_size = 32", "batch_size = 32\ndevice = \"cuda\"")]);
    let out = spotbatch()
        .args(["run", "--progress", "none"])
        .arg(&manifest)
        .output()
        .expect("spawn");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("device cuda:0"), "{all}");
}

#[test]
fn auto_runs_on_the_cpu_with_a_warning_when_there_is_no_gpu() {
    if cuda_device_count().is_ok_and(|n| n > 0) {
        eprintln!("SKIPPED auto_runs_on_the_cpu...: this machine has a GPU");
        return;
    }
    let job = JobDir::digits(10);
    let manifest = job.manifest(&[("batch_size = 32", "batch_size = 32\ndevice = \"auto\"")]);
    let out = run_ok(
        spotbatch()
            .args(["run", "--progress", "none"])
            .arg(&manifest),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("running inference on the CPU"),
        "stderr: {stderr}"
    );
    assert_eq!(job.rows().len(), job.input_keys().len());
}

/// Images of many sizes (smaller, larger, odd aspect, exactly the target) with structure and noise.
fn images() -> Vec<Pixels> {
    let mut seed = 12345u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 24) as u8
    };
    [
        (256, 256),
        (224, 224),
        (640, 480),
        (97, 311),
        (1000, 20),
        (8, 8),
        (225, 223),
    ]
    .into_iter()
    .map(|(w, h): (u32, u32)| {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let n = rnd() / 4;
                rgb.push(((x * 255 / w) as u8).wrapping_add(n));
                rgb.push(((y * 255 / h) as u8).wrapping_add(n));
                rgb.push((((x ^ y) & 0xff) as u8).wrapping_add(n));
            }
        }
        Pixels {
            width: w,
            height: h,
            rgb,
        }
    })
    .collect()
}

fn png(p: &Pixels) -> Vec<u8> {
    let img = image::RgbImage::from_raw(p.width, p.height, p.rgb.clone()).expect("pixels");
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .expect("encode");
    buf.into_inner()
}

#[test]
fn gpu_preprocessing_equals_the_cpu_reference() {
    if !gpu_or_skip("gpu_preprocessing_equals_the_cpu_reference") {
        return;
    }
    let imgs = images();
    let encoded: Vec<Vec<u8>> = imgs.iter().map(png).collect();
    for (pre, w, h, c) in [
        (
            "resize = [224, 224]\ncolor = \"rgb\"\nlayout = \"nchw\"\nscale = 0.00392156862745098\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]",
            224u32,
            224u32,
            3usize,
        ),
        (
            "resize = [160, 96]\ncolor = \"bgr\"\nlayout = \"nhwc\"\nscale = 1.0\nmean = [103.9, 116.8, 123.7]",
            160,
            96,
            3,
        ),
        (
            "resize = [28, 28]\ncolor = \"gray\"\nlayout = \"nchw\"\nscale = 0.00392156862745098",
            28,
            28,
            1,
        ),
    ] {
        let text = format!(
            "name = \"t\"\n[input]\nuri = \"i\"\n[model]\nuri = \"m.onnx\"\n[output]\nuri = \"o\"\n[preprocess]\n{pre}\n"
        );
        let m = Manifest::parse(&text, std::path::Path::new("/x")).expect("manifest");
        let item_len = c * (w * h) as usize;
        let plan = InputPlan {
            width: w,
            height: h,
            item_shape: vec![],
            item_len,
            fixed_batch: None,
        };
        let cpu = ImagePreprocessor::new(&m, &plan);
        let mut want = Vec::new();
        for bytes in &encoded {
            cpu.process(bytes, &mut want).expect("cpu preprocess");
        }
        for float in [Float::F32, Float::F16] {
            let mut gpu = GpuPreprocessor::new(0, TensorSpec::for_images(&cpu, float))
                .expect("gpu preprocessor");
            let decoded: Vec<Pixels> = encoded
                .iter()
                .map(|b| cpu.decode_pixels(b).expect("decode"))
                .collect();
            let refs: Vec<&Pixels> = decoded.iter().collect();
            // Padded to two more items than images: the padding must be zeros.
            let p = gpu.prepare(&refs, refs.len() + 2, None).expect("prepare");
            let got = gpu
                .download(&p, (refs.len() + 2) * item_len)
                .expect("download");
            let mut max = 0f32;
            for (a, b) in got.iter().zip(&want) {
                let b = match float {
                    Float::F32 => *b,
                    Float::F16 => half::f16::from_f32(*b).to_f32(),
                };
                max = max.max((a - b).abs());
            }
            assert!(
                got[want.len()..].iter().all(|v| *v == 0.0),
                "padding not zero"
            );
            eprintln!("{pre:?} {float:?}: max |gpu - cpu| = {max:e}");
            assert!(max <= 1e-3, "{pre:?} {float:?}: max diff {max}");
        }
    }
}

/// Runs the demo job on `device` with preprocessing on `pre_device` and `model_extra` lines in
/// its `[model]`; returns its rows and its `--timings` report.
fn demo_rows(
    device: &str,
    pre_device: &str,
    batch: usize,
    model_extra: &str,
) -> (
    std::collections::BTreeMap<String, serde_json::Value>,
    String,
) {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[
        (
            "batch_size = 32",
            &format!("batch_size = {batch}\n{model_extra}"),
        ),
        (
            "layout = \"nchw\"",
            &format!("layout = \"nchw\"\ndevice = \"{pre_device}\""),
        ),
    ]);
    let out = run_bounded(
        spotbatch()
            .args(["run", "--progress", "none", "--timings", "--device", device])
            .arg(&manifest)
            .env("SPOTBATCH_LOG", "info"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let timings = stderr[stderr.find("timings (").unwrap_or(0)..].to_string();
    (job.rows(), timings)
}

/// How many times `stage` ran, from a `--timings` report (0 when it did not run).
fn stage_count(timings: &str, stage: &str) -> u64 {
    timing(timings, stage).map_or(0, |(n, _, _)| n)
}

#[test]
fn cuda_gives_the_cpu_rows_on_the_demo() {
    if !gpu_or_skip("cuda_gives_the_cpu_rows_on_the_demo") {
        return;
    }
    let (cpu, _) = demo_rows("cpu", "cpu", 32, "");
    for (pre, batch) in [("cpu", 32), ("gpu", 32), ("gpu", 1), ("gpu", 128)] {
        let (gpu, timings) = demo_rows("cuda", pre, batch, "");
        assert_eq!(cpu.len(), gpu.len());
        // Every batch the model ran was preprocessed on the GPU (and waited for) when asked.
        let batches = stage_count(&timings, "inference");
        assert!(batches > 0, "{timings}");
        let on_gpu = if pre == "gpu" { batches } else { 0 };
        assert_eq!(stage_count(&timings, "gpu_preprocess"), on_gpu, "{timings}");
        assert_eq!(stage_count(&timings, "gpu_wait"), on_gpu, "{timings}");
        let mut max = 0f64;
        for (key, want) in &cpu {
            let got = &gpu[key];
            let top = |r: &serde_json::Value| r["top_k"][0]["index"].as_u64();
            assert_eq!(
                top(want),
                top(got),
                "{key}: top-1 differs ({pre}, batch {batch})"
            );
            for (a, b) in want["top_k"]
                .as_array()
                .expect("top_k")
                .iter()
                .zip(got["top_k"].as_array().expect("top_k"))
            {
                let d =
                    (a["score"].as_f64().unwrap_or(0.0) - b["score"].as_f64().unwrap_or(1.0)).abs();
                max = max.max(d);
            }
        }
        eprintln!("demo on cuda (preprocess {pre}, batch {batch}): same top-1 for {} items, max score diff {max:e}", cpu.len());
        // The CUDA provider multiplies float32 matrices in TF32 (10-bit mantissa) by default.
        assert!(max <= 5e-3, "scores differ by {max}");
    }
}

/// The `[model]` CUDA settings reach ONNX Runtime: with `tf32 = false` the provider's float32
/// products match the CPU's to float32 rounding (with TF32, ONNX Runtime's default, the demo's
/// scores are up to 1.3e-3 apart at batch 32); heuristic convolution search and an arena cap
/// still give every row.
#[test]
fn cuda_settings_reach_onnx_runtime() {
    if !gpu_or_skip("cuda_settings_reach_onnx_runtime") {
        return;
    }
    let (cpu, _) = demo_rows("cpu", "cpu", 32, "");
    let (gpu, _) = demo_rows(
        "cuda",
        "gpu",
        32,
        "tf32 = false\ncudnn_conv_algo_search = \"heuristic\"\ngpu_mem_limit_mb = 512",
    );
    let (same, max) = agreement(&cpu, &gpu);
    eprintln!(
        "demo on cuda, tf32 off: same top-1 for {same}/{} items, max score diff {max:e}",
        cpu.len()
    );
    assert_eq!(same, cpu.len(), "top-1 differs");
    assert!(max <= 1e-4, "scores differ by {max} with TF32 off");
}

/// Top-1 agreement and the largest top-k score difference between two runs' rows.
fn agreement(
    a: &std::collections::BTreeMap<String, serde_json::Value>,
    b: &std::collections::BTreeMap<String, serde_json::Value>,
) -> (usize, f64) {
    assert_eq!(a.len(), b.len());
    let mut same = 0;
    let mut max = 0f64;
    for (key, ra) in a {
        let rb = &b[key];
        if ra["top_k"][0]["index"] == rb["top_k"][0]["index"] {
            same += 1;
        }
        for ta in ra["top_k"].as_array().expect("top_k") {
            for tb in rb["top_k"].as_array().expect("top_k") {
                if ta["index"] == tb["index"] {
                    let d = (ta["score"].as_f64().unwrap_or(0.0)
                        - tb["score"].as_f64().unwrap_or(1.0))
                    .abs();
                    max = max.max(d);
                }
            }
        }
    }
    (same, max)
}

/// An fp16 model (the demo's MLP converted by scripts/fp16_model.py) gives the fp32 model's rows
/// within half precision, on the CPU here and also on CUDA when there is a GPU.
#[test]
fn fp16_model_gives_the_fp32_rows() {
    let job = JobDir::digits(1);
    let fp16 = job.path().join("model16.onnx");
    let st = std::process::Command::new(python())
        .arg(root().join("scripts/fp16_model.py"))
        .arg(job.path().join("model.onnx"))
        .arg(&fp16)
        .status()
        .expect("run python");
    assert!(st.success(), "fp16 conversion failed");
    let manifest = job.manifest(&[]);
    run_ok(
        spotbatch()
            .args(["run", "--progress", "none", "--device", "cpu"])
            .arg(&manifest),
    );
    let want = job.rows();
    let mut devices = vec!["cpu"];
    if gpu_or_skip("fp16_model_gives_the_fp32_rows on cuda") {
        devices.push("cuda");
    }
    for device in devices {
        let job16 = JobDir::digits(1);
        std::fs::copy(&fp16, job16.path().join("model.onnx")).expect("copy model");
        let manifest = job16.manifest(&[]);
        run_ok(
            spotbatch()
                .args(["run", "--progress", "none", "--device", device])
                .arg(&manifest),
        );
        let got = job16.rows();
        let (same, max) = agreement(&want, &got);
        eprintln!(
            "fp16 on {device}: top-1 agrees on {same}/{} items, max score diff {max:e}",
            want.len()
        );
        assert!(
            same * 100 >= want.len() * 99,
            "top-1 agrees on only {same}/{}",
            want.len()
        );
        assert!(max < 2e-2, "scores differ by {max}");
    }
}

/// Batches fill across shard and job boundaries: two jobs with the same model and preprocessing
/// (but their own labels and top_k) share batches on one worker, and each item still gets its own
/// job's post-processing.
#[test]
fn batches_fill_across_shards_and_jobs() {
    let job = JobDir::digits(40); // 14 images
    let n = job.input_keys().len();
    let edits = [
        (
            "batch_size = 32",
            "batch_size = 64\nmax_batch_delay_ms = 3000",
        ),
        ("shard_size = 64", "shard_size = 4"),
    ];
    let a = job.manifest(&edits);
    let b = job.path().join("job-b.toml");
    let text = std::fs::read_to_string(&a)
        .expect("manifest")
        .replace("name = \"digits\"", "name = \"digits-b\"")
        .replace("top_k = 3", "top_k = 2");
    std::fs::write(&b, text).expect("write manifest");
    for m in [&a, &b] {
        run_ok(spotbatch().arg("enqueue").arg(m));
    }
    let queue = format!("sqlite://{}", job.path().join("queue.db").display());
    let out = run_ok(
        spotbatch()
            .args([
                "worker",
                "--queue",
                &queue,
                "--exit-when-empty",
                "--prefetch",
                "16",
                "--device",
                "cpu",
            ])
            .arg("--manifest")
            .arg(&a)
            .arg("--manifest")
            .arg(&b)
            .env("SPOTBATCH_LOG", "spotbatch_worker::pipeline=debug"),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let batches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("batch dispatched"))
        .collect();
    let widest = batches
        .iter()
        .filter_map(|l| {
            let field = |name: &str| -> Option<usize> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))?
                    .parse()
                    .ok()
            };
            Some((field("items")?, field("shards")?, field("jobs")?))
        })
        .max()
        .expect("a batch line");
    eprintln!("batches: {batches:#?}");
    assert!(
        widest.1 > 1 && widest.2 == 2,
        "no batch spanned shards of both jobs: {batches:#?}"
    );
    // Every item of both jobs has one row, with its own job's top_k.
    let mut files = Vec::new();
    collect_files(&job.path().join("out"), &mut files);
    let mut per_job: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
    {
        let jobdir = f
            .ancestors()
            .find(|p| p.parent() == Some(job.path().join("out").as_path()))
            .expect("job folder")
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        for line in std::fs::read_to_string(f).expect("part").lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("row");
            let k = row["top_k"].as_array().expect("top_k").len();
            let e = per_job.entry(jobdir.clone()).or_default();
            e.0 += 1;
            e.1 = k;
        }
    }
    assert_eq!(per_job.len(), 2, "{per_job:?}");
    let tops: Vec<usize> = per_job.values().map(|v| v.1).collect();
    assert!(tops.contains(&2) && tops.contains(&3), "{per_job:?}");
    assert!(per_job.values().all(|v| v.0 == n), "{per_job:?}");
}
