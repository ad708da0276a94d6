//! Damaged checkpoints and damaged inputs, each built here from the small
//! fixtures (nothing large committed), run through `padv score` as a user
//! would. For every case: the exit status, an error that names the file,
//! line, tensor or key at fault, no panic text, and — where records are
//! scored with `--on-error skip` — one output line per input record and no
//! score built from missing numbers.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use cli_common::padv;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> PathBuf {
    fixtures().join("models/llama/ref")
}

fn input() -> PathBuf {
    fixtures().join("inputs/tiny_trajectories.jsonl")
}

/// A copy of the llama fixture policy in `dir/name`.
fn copy_policy(dir: &Path, name: &str) -> PathBuf {
    let src = fixtures().join("models/llama/trained");
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// The checkpoint's header (as text) and its data.
fn split(bytes: &[u8]) -> (String, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        String::from_utf8(bytes[8..8 + n].to_vec()).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Rewrite `model.safetensors` of `model` with `f(header, data)`.
fn edit_weights(model: &Path, f: impl FnOnce(&mut String, &mut Vec<u8>)) {
    let path = model.join("model.safetensors");
    let (mut header, mut data) = split(&std::fs::read(&path).unwrap());
    f(&mut header, &mut data);
    std::fs::write(&path, join(&header, &data)).unwrap();
}

/// Set `key` of `model`'s config.json to `value`.
fn edit_config(model: &Path, key: &str, value: Value) {
    let path = model.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&path, c.to_string()).unwrap();
}

/// `padv score` of the tiny input with `policy` against the fixture
/// reference, `--on-error skip`, output to `dir/out.jsonl`.
fn score(policy: &Path, input: &Path, dir: &Path) -> (Output, PathBuf) {
    let out = dir.join("out.jsonl");
    let _ = std::fs::remove_file(&out);
    let output = padv()
        .args(["score", "--device", "cpu", "--on-error", "skip", "--policy"])
        .arg(policy)
        .arg("--reference")
        .arg(reference())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    (output, out)
}

fn no_panic(stderr: &str, case: &str) {
    for text in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "memory allocation",
    ] {
        assert!(
            !stderr.contains(text),
            "{case}: panic text in stderr:\n{stderr}"
        );
    }
}

/// The case fails to load, with every `wants` in its message.
fn refused(case: &str, policy: &Path, dir: &Path, wants: &[&str], not: &[&str]) {
    let (output, _) = score(policy, &input(), dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{case}: exit status\n{stderr}"
    );
    no_panic(&stderr, case);
    for w in wants {
        assert!(stderr.contains(w), "{case}: `{w}` not in\n{stderr}");
    }
    for n in not {
        assert!(!stderr.contains(n), "{case}: `{n}` in\n{stderr}");
    }
}

#[test]
fn damaged_checkpoints_are_refused_naming_the_file_tensor_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut n = 0;
    let mut case = |name: &str, damage: &Damage, wants: &[&str], not: &[&str]| {
        n += 1;
        let model = copy_policy(dir, &format!("case{n}"));
        damage(&model);
        refused(name, &model, dir, wants, not);
    };
    case(
        "half the file",
        &|m| {
            let p = m.join("model.safetensors");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        },
        &["model.safetensors", "truncated"],
        &[],
    );
    case(
        "four bytes",
        &|m| std::fs::write(m.join("model.safetensors"), b"\x10\0\0\0").unwrap(),
        &["model.safetensors", "shorter than the 8-byte header length"],
        &[],
    );
    case(
        "a dtype safetensors does not know",
        &|m| edit_weights(m, |h, _| *h = h.replacen("\"F32\"", "\"F33\"", 1)),
        &["model.safetensors", "unknown dtype `F33`", "tensor `"],
        &["truncated"],
    );
    case(
        "a dtype padv does not compute in",
        &|m| {
            edit_weights(m, |h, _| {
                *h = h.replace(
                    r#""model.norm.weight":{"dtype":"F32""#,
                    r#""model.norm.weight":{"dtype":"I32""#,
                )
            })
        },
        &["model.norm.weight", "I32", "unsupported"],
        &["truncated"],
    );
    case(
        "a shape that disagrees with the offsets",
        &|m| {
            edit_weights(m, |h, _| {
                let v: Value = serde_json::from_str(h).unwrap();
                let shape = v["model.norm.weight"]["shape"].to_string();
                *h = h.replace(
                    &format!(r#""model.norm.weight":{{"dtype":"F32","shape":{shape}"#),
                    r#""model.norm.weight":{"dtype":"F32","shape":[65]"#,
                );
            })
        },
        &["model.norm.weight", "[65]", "data_offsets"],
        &["truncated"],
    );
    case(
        "a tensor named twice",
        &|m| {
            // A second entry, last (the one JSON keeps), over lm_head's bytes:
            // the crate then blames whichever tensor's offsets look wrong.
            edit_weights(m, |h, _| {
                let end = h.trim_end().len() - 1;
                let dup =
                    r#","model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}"#;
                h.insert_str(end, dup);
            })
        },
        &["tensor `model.norm.weight` appears twice"],
        &["truncated"],
    );
    case(
        "a tensor missing",
        &|m| {
            let p = m.join("model.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let kept: Vec<_> = st
                .tensors()
                .into_iter()
                .filter(|(n, _)| n != "model.layers.1.self_attn.k_proj.weight")
                .collect();
            safetensors::serialize_to_file(kept, None, &p).unwrap();
        },
        &["model.layers.1.self_attn.k_proj.weight", "missing"],
        &[],
    );
    case(
        "a symlink loop for the weights",
        &|m| {
            let p = m.join("model.safetensors");
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink(&p, &p).unwrap();
        },
        &["model.safetensors", "symbolic links"],
        &["no model.safetensors"],
    );
    case(
        "an index naming a shard that is not there",
        &|m| {
            std::fs::remove_file(m.join("model.safetensors")).unwrap();
            let index =
                json!({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}});
            std::fs::write(m.join("model.safetensors.index.json"), index.to_string()).unwrap();
        },
        &["model-00001-of-00002.safetensors", "No such file"],
        &[],
    );
    case(
        "config.json that is not JSON",
        &|m| std::fs::write(m.join("config.json"), "{\"hidden_size\": 64,\n  oops}").unwrap(),
        &["config.json", "line 2"],
        &[],
    );
    case(
        "a billion layers",
        &|m| edit_config(m, "num_hidden_layers", json!(1_000_000_000)),
        &["num_hidden_layers"],
        &[],
    );
    case(
        "an activation padv does not compute",
        &|m| edit_config(m, "hidden_act", json!("relu")),
        &["hidden_act", "relu"],
        &[],
    );
    case(
        "a vocabulary larger than the embedding",
        &|m| edit_config(m, "vocab_size", json!(1024)),
        &["model.embed_tokens.weight", "1024"],
        &[],
    );
    case(
        "a head wider than any model",
        &|m| edit_config(m, "head_dim", json!(1u64 << 40)),
        &["config.json", "head_dim"],
        &["memory allocation"],
    );
    case(
        "rope_scaling that is not an object",
        &|m| edit_config(m, "rope_scaling", json!("linear")),
        &["config.json", "`rope_scaling` must be an object"],
        &[],
    );
    case(
        "a sliding window of no tokens",
        &|m| {
            edit_config(
                m,
                "layer_types",
                json!(["sliding_attention", "sliding_attention"]),
            );
            edit_config(m, "sliding_window", json!(0));
        },
        &["config.json", "`sliding_window` is 0"],
        &[],
    );
    case(
        "a directory in tokenizer.json's place",
        &|m| {
            std::fs::remove_file(m.join("tokenizer.json")).unwrap();
            std::fs::create_dir(m.join("tokenizer.json")).unwrap();
        },
        &["tokenizer.json", "is a directory, not a file"],
        &[],
    );
    case(
        "tokenizer.json that is not JSON",
        &|m| std::fs::write(m.join("tokenizer.json"), "{\"model\": ").unwrap(),
        &["tokenizer.json"],
        &[],
    );
    eprintln!("{n} damaged checkpoints refused with a clear error");
}

/// What a case does to a copy of the policy.
type Damage = dyn Fn(&Path);

/// Numbers that load but cannot give a finite score: every record is an
/// error line in its place, never a score.
#[test]
fn checkpoints_that_give_non_finite_numbers_score_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n_records = std::fs::read_to_string(input())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    // (case, damage, where the error says the numbers stopped being finite)
    let cases: [(&str, &Damage, &str); 4] = [
        (
            "an infinite weight in layer 1",
            &|m| {
                edit_weights(m, |h, data| {
                    let v: Value = serde_json::from_str(h).unwrap();
                    let a = v["model.layers.1.post_attention_layernorm.weight"]["data_offsets"][0]
                        .as_u64()
                        .unwrap() as usize;
                    data[a..a + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
                })
            },
            "first not finite after decoder layer 1",
        ),
        (
            "rms_norm_eps -1",
            &|m| edit_config(m, "rms_norm_eps", json!(-1.0)),
            "",
        ),
        (
            "rope_theta 0",
            &|m| edit_config(m, "rope_theta", json!(0)),
            "",
        ),
        (
            "NaN embeddings",
            &|m| {
                edit_weights(m, |h, data| {
                    let v: Value = serde_json::from_str(h).unwrap();
                    let o = &v["model.embed_tokens.weight"]["data_offsets"];
                    let (a, b) = (
                        o[0].as_u64().unwrap() as usize,
                        o[1].as_u64().unwrap() as usize,
                    );
                    for c in data[a..b].chunks_mut(4) {
                        c.copy_from_slice(&f32::NAN.to_le_bytes());
                    }
                })
            },
            "first not finite after the token embedding",
        ),
    ];
    for (i, (case, damage, stage)) in cases.iter().enumerate() {
        let model = copy_policy(dir, &format!("nonfinite{i}"));
        damage(&model);
        let (output, out) = score(&model, &input(), dir);
        let stderr = String::from_utf8_lossy(&output.stderr);
        no_panic(&stderr, case);
        if !output.status.success() {
            // Refused at load: it must name the key.
            assert!(
                stderr.contains("rms_norm_eps") || stderr.contains("rope_theta"),
                "{case}: {stderr}"
            );
            continue;
        }
        let lines: Vec<Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), n_records, "{case}: one line per record");
        for l in &lines {
            assert!(l.get("score").is_none(), "{case}: a score was written: {l}");
            let e = l["error"].as_str().unwrap_or_else(|| panic!("{case}: {l}"));
            assert!(
                e.contains("policy log-prob") && e.contains("not finite"),
                "{case}: {e}"
            );
            assert!(e.contains(stage), "{case}: `{stage}` not in {e}");
        }
    }
}

/// Input files damaged line by line: with `--on-error skip`, one output line
/// per input record, each damaged one an error naming `file:line`; without
/// it, exit status 1 naming the first bad line, and the lines before it kept.
#[test]
fn damaged_input_lines_are_errors_in_their_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good: Vec<String> = std::fs::read_to_string(input())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("cut short", good[0].as_bytes()[..good[0].len() / 2].to_vec()),
        ("not UTF-8", b"{\"id\": \"x\xff\", \"text\": \"a\"}".to_vec()),
        ("a list", b"[1, 2]".to_vec()),
        ("messages not a list", br#"{"id": "m", "messages": 3}"#.to_vec()),
        ("unknown role", br#"{"id": "r", "messages": [{"role": "oracle", "content": "x"}]}"#.to_vec()),
        ("a token id past the vocabulary", br#"{"id": "t", "token_ids": [1, 2, 99999]}"#.to_vec()),
        ("nested 10000 deep", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()),
        ("no record field", br#"{"id": "nothing"}"#.to_vec()),
        ("failure_step past the steps", br#"{"id": "f", "failure_step": 9, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#.to_vec()),
    ];
    let mut text = Vec::new();
    let mut expect_error = Vec::new();
    for (i, (_, bad)) in damaged.iter().enumerate() {
        text.extend_from_slice(good[i % good.len()].as_bytes());
        text.push(b'\n');
        expect_error.push(None);
        text.extend_from_slice(bad);
        text.push(b'\n');
        expect_error.push(Some(2 * i + 2));
    }
    let path = dir.join("damaged.jsonl");
    std::fs::write(&path, &text).unwrap();
    let policy = fixtures().join("models/llama/trained");
    let (output, out) = score(&policy, &path, dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    no_panic(&stderr, "skip");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        expect_error.len(),
        "one output line per input line"
    );
    for (l, want) in lines.iter().zip(&expect_error) {
        match want {
            None => assert!(l.get("error").is_none(), "{l}"),
            Some(line) => {
                let what = damaged[line / 2 - 1].0;
                let e = l["error"].as_str().unwrap_or_else(|| panic!("{what}: {l}"));
                let loc = format!("{}:{line}", path.display());
                assert!(
                    e.starts_with(&loc),
                    "{what}: `{e}` does not start with {loc}"
                );
                assert!(l.get("score").is_none(), "{what}: {l}");
            }
        }
    }
    assert!(
        stderr.contains(&format!("{} errors", damaged.len())),
        "{stderr}"
    );

    // Without `--on-error skip`: exit 1 at line 2, line 1 kept.
    let out = dir.join("fail.jsonl");
    let output = padv()
        .args(["score", "--device", "cpu", "--policy"])
        .arg(&policy)
        .arg("--reference")
        .arg(reference())
        .arg("--input")
        .arg(&path)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    no_panic(&stderr, "fail");
    assert!(
        stderr.contains(&format!("{}:2", path.display())),
        "{stderr}"
    );
    let kept = std::fs::read_to_string(&out).unwrap();
    assert_eq!(kept.lines().count(), 1, "{kept}");
}
