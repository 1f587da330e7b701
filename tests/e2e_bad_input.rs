//! Bad input loses nothing: poison files become error rows, shards that keep failing are
//! dead-lettered and `run` says which, and `validate` names every wrong field.

mod common;

use common::*;

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `w`×`h` gray pixels, with no real image data behind it.
fn png_header_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn poison_inputs_become_error_rows_and_the_job_completes() {
    let job = JobDir::digits(30);
    let good = job.input_keys();
    let poison = job.images().join("poison");
    std::fs::create_dir_all(&poison).unwrap();
    let a_png = std::fs::read(job.images().join(&good[0])).unwrap();
    std::fs::write(poison.join("empty.png"), b"").unwrap();
    std::fs::write(
        poison.join("text.png"),
        b"this is not an image, it is a text file\n",
    )
    .unwrap();
    std::fs::write(poison.join("truncated.png"), &a_png[..a_png.len() / 2]).unwrap();
    std::fs::write(
        poison.join("bomb.png"),
        png_header_claiming(100_000, 100_000),
    )
    .unwrap();
    std::fs::write(poison.join("huge.png"), vec![7u8; 300_000]).unwrap();
    // An image of the wrong size for the model, with no resize configured.
    let odd = image_of_size(12, 10);
    std::fs::write(poison.join("odd-size.png"), odd).unwrap();
    // Any Unicode in keys, spaces included, is fine and kept as written.
    let uni = job.images().join("ünïcødé dir");
    std::fs::create_dir_all(&uni).unwrap();
    std::fs::write(uni.join("数字 1.png"), &a_png).unwrap();

    let manifest = job.manifest(&[
        ("resize = [8, 8]\n", ""),
        (
            "glob = \"**/*.png\"",
            "glob = \"**/*.png\"\nmax_bytes = 100000",
        ),
    ]);
    let out = run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("6 error rows"), "{stdout}");

    let rows = job.one_row_per_input();
    let expect = [
        ("poison/empty.png", "empty file"),
        ("poison/text.png", "not an image (unrecognised format)"),
        ("poison/truncated.png", "corrupt or truncated image"),
        (
            "poison/bomb.png",
            "image is 100000×100000 (10000000000 pixels), over preprocess.max_pixels",
        ),
        (
            "poison/huge.png",
            "input is 300000 bytes, over input.max_bytes = 100000",
        ),
        ("poison/odd-size.png", "image is 12×10, the model takes 8×8"),
    ];
    for (key, reason) in expect {
        let row = &rows[key];
        let err = row["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} should have an error row: {row}"));
        assert!(
            err.starts_with(reason),
            "{key}: {err:?} should start with {reason:?}"
        );
        assert!(!err.contains('\n'));
        assert!(
            row["top_k"].is_null(),
            "{key}: a failed row carries no result"
        );
    }
    let uni_row = &rows["ünïcødé dir/数字 1.png"];
    assert!(uni_row["error"].is_null());
    assert_eq!(
        uni_row["top_k"][0], rows[&good[0]]["top_k"][0],
        "same pixels, same answer"
    );
    for key in &good {
        assert!(rows[key]["error"].is_null(), "{key}");
    }
}

fn image_of_size(w: u32, h: u32) -> Vec<u8> {
    // A valid gray PNG, stored (uncompressed deflate), built by hand so the test needs no encoder.
    let mut raw = Vec::new();
    for _ in 0..h {
        raw.push(0u8);
        raw.extend(std::iter::repeat_n(128u8, w as usize));
    }
    let mut z = vec![0x78, 0x01, 0x01];
    let len = raw.len() as u16;
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&(!len).to_le_bytes());
    z.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = png_header_claiming(w, h);
    // Replace the placeholder IDAT and IEND (last 12 + 20 bytes) with the real data.
    png.truncate(png.len() - 12 - 20);
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn shards_that_keep_failing_are_dead_lettered_and_run_names_them() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[
        ("shard_size = 64", "shard_size = 8"),
        ("max_attempts = 3", "max_attempts = 2"),
    ]);
    // A file where the job's `_done/` folder goes: every shard fails writing its done marker,
    // which nothing checked up front can see (a model that cannot load is refused before `run`
    // starts now, see tests/e2e_first_hour.rs).
    let validated = run_ok(spotbatch().arg("validate").arg(&manifest));
    let stdout = String::from_utf8_lossy(&validated.stdout).to_string();
    let job_id = stdout
        .split("job ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no job id in {stdout}"));
    let folder = job.path().join("out").join(job_id);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("_done"), b"in the way").unwrap();
    let out = spotbatch()
        .arg("run")
        .arg(&manifest)
        .args(["--progress", "none"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "run must fail when shards are dead-lettered"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dead: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("dead-lettered: shard "))
        .collect();
    assert_eq!(
        dead.len(),
        3,
        "18 inputs in shards of 8 = 3 shards:\n{stderr}"
    );
    for line in dead {
        assert!(line.contains("after 2 deliveries: "), "{line}");
        assert!(line.contains("_done/"), "the reason names the file: {line}");
        let reason = line.split("deliveries: ").nth(1).unwrap_or_default();
        assert!(!reason.contains('#'), "no temporary file's name: {line}");
    }
    assert!(stderr.contains("3 shards dead-lettered"), "{stderr}");

    // Fixing the cause and running again re-drives the dead-lettered shards.
    std::fs::remove_file(folder.join("_done")).unwrap();
    run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    assert_eq!(job.rows().len(), 18);
}

#[test]
fn validate_names_each_wrong_field_on_one_line() {
    let job = JobDir::digits(30);
    std::fs::write(job.path().join("labels.txt"), "a\nb\nc\n").unwrap();
    let manifest = job.manifest(&[("input = \"pixels\"", "input = \"pixelz\"")]);
    let out = spotbatch().arg("validate").arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}: ", manifest.display());
    assert!(
        stderr.contains(&format!(
            "{prefix}model.input: \"pixelz\" is not an input of the model (its inputs: \"pixels\")"
        )),
        "{stderr}"
    );

    let manifest = job.manifest(&[]);
    let out = spotbatch().arg("validate").arg(&manifest).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{prefix}postprocess.labels: has 3 labels, the model output \"probs\" has 10 classes"
        )),
        "{stderr}"
    );

    std::fs::remove_file(job.path().join("labels.txt")).unwrap();
    std::fs::remove_file(job.path().join("model.onnx")).unwrap();
    let out = spotbatch().arg("validate").arg(&manifest).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{prefix}model.uri: file://"))
                && l.ends_with("model.onnx: not found")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("{prefix}postprocess.labels: file://"))
                && l.ends_with("labels.txt: not found")
        ),
        "{stderr}"
    );

    // Manifest mistakes: every one reported, one line each, before any file is touched.
    std::fs::write(&manifest, "name = \"x y\"\n[input]\nuri = \"i\"\nglobb = \"*\"\n[model]\nuri = \"m.onnx\"\nbatch_size = \"many\"\n[output]\nuri = \"o\"\n[preprocess]\ncolor = \"gray\"\nmean = [1.0, 2.0]\n").unwrap();
    let out = spotbatch().arg("validate").arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fields: Vec<String> = stderr
        .lines()
        .map(|l| {
            l.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("line without the file: {l}"))
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    // Every problem at once (issue 21, item 9): the keys that cannot be read and, beside them,
    // the checks of those that can (before, the name and the mean showed only once the first two
    // were fixed).
    assert_eq!(
        fields,
        vec!["input.globb", "model.batch_size", "name", "preprocess.mean"],
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{prefix}name: ")), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{prefix}preprocess.mean: has 2 values, but color = \"gray\" has 1 channel"
        )),
        "{stderr}"
    );
}

#[test]
fn missing_onnx_runtime_is_one_clear_error() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[]);
    let out = std::process::Command::new(BIN)
        .arg("run")
        .arg(&manifest)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set ORT_DYLIB_PATH"), "{stderr}");
    assert!(!job.path().join("out").exists(), "nothing was started");
}
