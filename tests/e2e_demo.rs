//! The demo through the `spotbatch` binary: every input exactly one row, the documented accuracy,
//! and scores equal to onnxruntime's Python API on the same pixels.

mod common;

use common::*;

/// The held-out accuracy of the demo model, as documented in the README (528 of 540).
const DOCUMENTED_CORRECT: usize = 528;

#[test]
fn demo_rows_accuracy_and_parity_with_python_onnxruntime() {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[]);
    let out =
        run_ok(
            spotbatch()
                .arg("run")
                .arg(&manifest)
                .args(["--progress", "none", "--timings"]),
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("540 of 540 items in 9/9 shards, 0 error rows"),
        "{stdout}"
    );
    check_timings(&String::from_utf8_lossy(&out.stderr));

    let rows = job.rows();
    let keys = job.input_keys();
    assert_eq!(keys.len(), 540);
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        keys,
        "exactly one row per input"
    );

    let mut correct = 0;
    for (key, row) in &rows {
        assert!(row["error"].is_null(), "{key}: {}", row["error"]);
        let top = row["top_k"].as_array().expect("top_k list");
        assert_eq!(top.len(), 3);
        let truth: u64 = key.split('/').next().unwrap().parse().unwrap();
        correct += usize::from(top[0]["index"].as_u64() == Some(truth));
        // Labels come from labels.txt, line N naming class N.
        let names = [
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        ];
        assert_eq!(
            top[0]["label"].as_str(),
            Some(names[top[0]["index"].as_u64().unwrap() as usize])
        );
    }
    assert_eq!(
        correct, DOCUMENTED_CORRECT,
        "accuracy differs from the documented 528/540"
    );

    // Python onnxruntime on the same pixels.
    let reference = std::process::Command::new(python())
        .arg(root().join("tests/support/reference.py"))
        .arg(job.path().join("model.onnx"))
        .arg(job.images())
        .arg("pixels")
        .output()
        .expect("run reference.py");
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let reference: std::collections::BTreeMap<String, Vec<f64>> =
        serde_json::from_slice(&reference.stdout).expect("reference JSON");
    assert_eq!(reference.len(), rows.len());
    let mut worst: f64 = 0.0;
    for (key, row) in &rows {
        let probs = &reference[key];
        for entry in row["top_k"].as_array().unwrap() {
            let i = entry["index"].as_u64().unwrap() as usize;
            let diff = (entry["score"].as_f64().unwrap() - probs[i]).abs();
            worst = worst.max(diff);
        }
        // The top class is Python's top class too.
        let py_top = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(
            row["top_k"][0]["index"].as_u64(),
            Some(py_top as u64),
            "{key}"
        );
    }
    assert!(
        worst <= 1e-4,
        "largest score difference from onnxruntime Python: {worst}"
    );
}

#[test]
fn validate_accepts_the_demo() {
    let job = JobDir::digits(10);
    let manifest = job.manifest(&[]);
    let out = run_ok(spotbatch().arg("validate").arg(&manifest));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok — job digits-"), "{stdout}");
    assert!(stdout.contains("54 inputs in 1 shard;"), "{stdout}");
    assert!(stdout.contains("\"pixels\" [1, 8, 8]"), "{stdout}");
}

/// `--timings` accounts for every item, batch and shard of the run: each input fetched and
/// decoded once, every batch the model ran post-processed, each of the 9 shards written.
fn check_timings(stderr: &str) {
    let stage = |name: &str| -> (u64, f64, f64) {
        let (n, mean, total) =
            timing(stderr, name).unwrap_or_else(|| panic!("no {name} line in\n{stderr}"));
        assert!(
            (mean * n as f64 / 1e3 - total).abs() <= 1e-3 + total * 1e-3,
            "{name}: mean × count is not the total in\n{stderr}"
        );
        (n, mean, total)
    };
    assert_eq!(stage("fetch").0, 540, "{stderr}");
    assert_eq!(stage("decode").0, 540, "{stderr}");
    assert_eq!(stage("write").0, 9, "{stderr}");
    let batches = stage("inference").0;
    assert!(batches > 0 && stage("inference").2 > 0.0, "{stderr}");
    assert_eq!(stage("postprocess").0, batches, "{stderr}");
    assert!(
        stderr.contains(&format!("540 items in {batches} batches")),
        "{stderr}"
    );
    // The demo is preprocessed on the CPU: no GPU stage.
    assert!(!stderr.contains("gpu_preprocess"), "{stderr}");
}
