//! Replays every fuzz target's corpus (`fuzz/corpus/TARGET/`: the seeds from the real formats and
//! the inputs of every crash found, kept as regressions) through the target's function, on the
//! stable toolchain and without a fuzzing engine. `make fuzz` explores; this keeps what it found.

use std::path::Path;

use spotbatch_fuzz::TARGETS;

#[test]
fn every_fuzz_target_is_listed_and_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| {
            let path = e.expect("entry").path();
            path.file_stem()
                .and_then(|s| s.to_str())
                .expect("a target's file name")
                .to_string()
        })
        .collect();
    files.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "fuzz_targets/*.rs and spotbatch_fuzz::TARGETS"
    );
}

#[test]
fn every_corpus_file_keeps_its_targets_property() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no seeds", dir.display());
        for input in &inputs {
            let bytes = std::fs::read(input).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(
                outcome.is_ok(),
                "{name}: {} breaks the target's property (rerun: cargo fuzz run {name} {})",
                input.display(),
                input.display()
            );
        }
        println!("{name}: {} inputs", inputs.len());
    }
}

/// The stored-manifest seeds are `Manifest::to_stored` of the manifest seeds that validate.
#[test]
#[ignore = "writes fuzz/corpus/stored_manifest/: run once when the stored form changes"]
fn write_stored_manifest_seeds() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for entry in std::fs::read_dir(corpus.join("manifest")).expect("manifest seeds") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(m) = spotbatch_proto::Manifest::parse(&text, Path::new("/jobs/j")) {
            let name = path.file_stem().and_then(|s| s.to_str()).expect("a name");
            std::fs::write(
                corpus.join("stored_manifest").join(format!("{name}.json")),
                m.to_stored(),
            )
            .expect("write a seed");
        }
    }
}
