//! `--merge`: the reference replaced by a weight-space merge π_α of
//! reference and policy. transformers' log-probs under independently merged
//! weights (linear and TIES, f32 and bf16 pairs) to 1e-4 through
//! `padv score --tokens`; an α sweep in one run; DARE's seeded masks; the
//! errors for bad settings.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_common::{padv, pair_args, succeed};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `padv score --tokens` of the tiny trajectories on pair `name`, with `extra` arguments.
fn score(name: &str, extra: &[&str]) -> Vec<Value> {
    let out = succeed(&mut score_cmd(name, extra));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn score_cmd(name: &str, extra: &[&str]) -> Command {
    let models = fixtures().join("models").join(name);
    let mut cmd = padv();
    cmd.args(["score", "--device", "cpu", "--tokens", "--output", "-"])
        .args(pair_args(&models))
        .arg("--input")
        .arg(fixtures().join("inputs/tiny_trajectories.jsonl"))
        .args(extra);
    cmd
}

fn floats(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

/// Every record's policy / reference / advantage arrays within 1e-4 of the
/// expected file's.
fn assert_matches(got: &[Value], expected_file: &str) {
    let path = fixtures().join(format!("expected/{expected_file}.json"));
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let want = expected["records"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let id = w["id"].as_str().unwrap();
        assert_eq!(g["token_ids"], w["token_ids"], "{expected_file}/{id}");
        for (gk, wk) in [
            ("logp_policy", "logprobs_trained"),
            ("logp_reference", "logprobs_ref"),
            ("advantage", "diff"),
        ] {
            let (ga, wa) = (floats(&g[gk]), floats(&w[wk]));
            assert_eq!(ga.len(), wa.len());
            for (t, (a, b)) in ga.iter().zip(&wa).enumerate().skip(1) {
                let d = (a.unwrap() - b.unwrap()).abs();
                assert!(d <= 1e-4, "{expected_file}/{id} {gk}[{t}]: {a:?} vs {b:?}");
            }
        }
    }
}

#[test]
fn merged_references_score_like_transformers_through_the_cli() {
    for (pair, method, alpha) in [
        ("llama", "linear", "0.3"),
        ("llama", "ties", "0.6"),
        ("llama_bf16", "linear", "0.5"),
        ("llama_bf16", "ties", "0.4"),
        ("qwen3", "ties", "0.7"),
    ] {
        let got = score(
            pair,
            &["--merge", method, "--alpha", alpha, "--density", "0.2"],
        );
        for g in &got {
            assert_eq!(g["alpha"].as_f64(), Some(alpha.parse().unwrap()));
        }
        assert_matches(&got, &format!("merged_{pair}_{method}_a{alpha}"));
    }
}

#[test]
fn an_alpha_sweep_writes_every_record_once_per_alpha_with_the_ends_exact() {
    let plain = score("llama", &[]);
    let sweep = score("llama", &["--merge", "linear", "--alpha", "0,0.3,1"]);
    assert_eq!(sweep.len(), 3 * plain.len());
    for (i, p) in plain.iter().enumerate() {
        let lines = &sweep[3 * i..3 * i + 3];
        for (l, alpha) in lines.iter().zip([0.0, 0.3, 1.0]) {
            assert_eq!(l["id"], p["id"]);
            assert_eq!(l["alpha"].as_f64(), Some(alpha));
            // The policy side is the same whatever α.
            assert_eq!(l["logp_policy"], p["logp_policy"]);
        }
        // α = 0 is the reference and α = 1 the policy, bit for bit.
        assert_eq!(lines[0]["logp_reference"], p["logp_reference"]);
        assert_eq!(lines[2]["logp_reference"], p["logp_policy"]);
    }
    let middle: Vec<Value> = sweep.iter().skip(1).step_by(3).cloned().collect();
    assert_matches(&middle, "merged_llama_linear_a0.3");
}

#[test]
fn ties_at_alpha_zero_is_the_reference() {
    let plain = score("qwen3", &[]);
    let merged = score("qwen3", &["--merge", "ties", "--alpha", "0"]);
    for (p, m) in plain.iter().zip(&merged) {
        assert_eq!(p["logp_reference"], m["logp_reference"]);
    }
}

#[test]
fn dare_is_reproducible_for_a_seed_on_any_thread_count() {
    let args = [
        "--merge",
        "dare_linear",
        "--alpha",
        "0.8",
        "--merge-seed",
        "3",
    ];
    let run = |threads: &str, args: &[&str]| {
        let out = succeed(score_cmd("llama", args).env("RAYON_NUM_THREADS", threads));
        String::from_utf8(out.stdout).unwrap()
    };
    let one = run("1", &args);
    assert_eq!(one, run("2", &args));
    assert_eq!(one, run("2", &args));
    // One policy: sign election is the identity, so dare_ties is dare_linear.
    let mut ties = args;
    ties[1] = "dare_ties";
    assert_eq!(
        one.replace("dare_linear", "dare_ties"),
        run("2", &ties),
        "dare_ties with one policy"
    );
    // Another seed draws another mask.
    let mut other = args;
    other[5] = "4";
    assert_ne!(one.replace("\"seed\":3", "\"seed\":4"), run("2", &other));
    // And the merge differs from the plain reference.
    let plain: Vec<Value> = score("llama", &[]);
    let dare: Vec<Value> = one
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_ne!(plain[0]["logp_reference"], dare[0]["logp_reference"]);
}

#[test]
fn emr_with_one_policy_is_linear_up_to_rounding() {
    let linear = score("llama", &["--merge", "linear", "--alpha", "0.3"]);
    let emr = score("llama", &["--merge", "emr", "--alpha", "0.3"]);
    for (l, e) in linear.iter().zip(&emr) {
        for (a, b) in floats(&l["logp_reference"])
            .iter()
            .zip(floats(&e["logp_reference"]))
            .skip(1)
        {
            assert!((a.unwrap() - b.unwrap()).abs() <= 1e-5);
        }
    }
}

fn fails_with(name: &str, extra: &[&str], needle: &str) {
    let out = score_cmd(name, extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{extra:?} should fail");
    assert!(err.contains(needle), "{extra:?}: {err}");
}

#[test]
fn bad_merge_settings_are_refused_with_the_reason() {
    fails_with("llama", &["--merge", "ties", "--alpha", "1.5"], "[0, 1]");
    fails_with(
        "llama",
        &["--merge", "ties", "--alpha", "0.2,-0.1"],
        "[0, 1]",
    );
    fails_with(
        "llama",
        &["--merge", "ties", "--alpha", "0.5", "--density", "0"],
        "(0, 1]",
    );
    fails_with(
        "llama",
        &["--merge", "ties", "--alpha", "0.5", "--density", "1.5"],
        "(0, 1]",
    );
    fails_with(
        "llama",
        &["--merge", "average", "--alpha", "0.5"],
        "dare_linear",
    );
    fails_with("llama", &["--merge", "ties"], "--alpha");
    fails_with("llama", &["--alpha", "0.5"], "--merge");
    // A repeated α would write every record twice under one α.
    fails_with(
        "llama",
        &["--merge", "linear", "--alpha", "0.5,0.2,0.5"],
        "α = 0.5 is given twice",
    );
}

/// A copy of the llama policy whose MLP is narrower (intermediate 64 → 32).
fn narrow_policy(dir: &Path) -> PathBuf {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let src = fixtures().join("models/llama/trained");
    let out = dir.join("narrow");
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "json") {
            std::fs::copy(&f, out.join(f.file_name().unwrap())).unwrap();
        }
    }
    let cfg_path = out.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let inter = cfg["intermediate_size"].as_u64().unwrap() as usize;
    cfg["intermediate_size"] = (inter / 2).into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        assert_eq!(t.dtype(), Dtype::F32);
        let (shape, data) = (t.shape().to_vec(), t.data());
        let (shape, data) = if name.contains("gate_proj") || name.contains("up_proj") {
            // [inter, hidden]: the first half of the rows.
            (vec![inter / 2, shape[1]], data[..data.len() / 2].to_vec())
        } else if name.contains("down_proj") {
            // [hidden, inter]: the first half of each row.
            let row = shape[1] * 4;
            let d = data
                .chunks(row)
                .flat_map(|r| r[..row / 2].to_vec())
                .collect();
            (vec![shape[0], inter / 2], d)
        } else {
            (shape, data.to_vec())
        };
        kept.push((name, shape, data));
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

/// `padv score` of the tiny trajectories with `policy` merged linearly
/// into `reference` at `alpha`.
fn merge_cmd(policy: &Path, reference: &Path, alpha: &str) -> Command {
    let mut cmd = padv();
    cmd.args(["score", "--device", "cpu", "--output", "-", "--policy"])
        .arg(policy)
        .arg("--reference")
        .arg(reference)
        .arg("--input")
        .arg(fixtures().join("inputs/tiny_trajectories.jsonl"))
        .args(["--merge", "linear", "--alpha", alpha]);
    cmd
}

#[test]
fn a_policy_of_another_shape_is_refused_naming_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let policy = narrow_policy(dir.path());
    let out = merge_cmd(&policy, &fixtures().join("models/llama/ref"), "0.5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot merge") && err.contains("layer 0: intermediate_size 88 against 176"),
        "{err}"
    );
}

#[test]
fn eval_prints_a_table_per_alpha_from_raw_trajectories_and_from_a_sweep_file() {
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld");
    let dir = tempfile::tempdir().unwrap();
    let scored = dir.path().join("sweep.jsonl");
    let model = |cmd: &mut Command| {
        cmd.args(pair_args(&toy.join("models")))
            .args(["--device", "cpu", "--merge", "ties", "--alpha", "0.2,0.6"]);
    };
    let mut cmd = padv();
    cmd.args(["score", "--output"])
        .arg(&scored)
        .arg("--input")
        .arg(toy.join("demo_ref.jsonl"));
    model(&mut cmd);
    succeed(&mut cmd);
    let from_file = succeed(padv().args(["eval", "--input"]).arg(&scored));
    let mut cmd = padv();
    cmd.args(["eval", "--input"])
        .arg(toy.join("demo_ref.jsonl"));
    model(&mut cmd);
    let direct = succeed(&mut cmd);
    let (from_file, direct) = (
        String::from_utf8(from_file.stdout).unwrap(),
        String::from_utf8(direct.stdout).unwrap(),
    );
    for text in [&from_file, &direct] {
        let a = text.find("α = 0.2").expect(text);
        let b = text.find("α = 0.6").expect(text);
        assert!(a < b);
    }
    assert_eq!(from_file, direct, "the same tables either way");
}

/// A copy of fixture checkpoint `from` in `dir/name`, its config.json
/// edited by `edit`.
fn edited_copy(from: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let path = to.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&path, c.to_string()).unwrap();
    to
}

#[test]
fn a_merge_of_checkpoints_describing_different_networks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("models/llama");
    let refused = |policy: &Path, reference: &Path, needle: &str| {
        let out = merge_cmd(policy, reference, "1").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}: {err}");
        assert!(
            err.contains("describe different networks") && err.contains(needle),
            "{needle}: {err}"
        );
        assert!(out.stdout.is_empty(), "{needle}: nothing scored");
    };
    // Same shapes, another RoPE: α = 1 would not be the policy.
    let theta = edited_copy(&llama.join("trained"), dir.path(), "theta", |c| {
        c["rope_theta"] = 500000.0.into()
    });
    refused(&theta, &llama.join("ref"), "layer 0: RoPE");
    let heads = edited_copy(&llama.join("trained"), dir.path(), "heads", |c| {
        c["num_attention_heads"] = 8.into();
        c["num_key_value_heads"] = 4.into();
        c["head_dim"] = 8.into();
    });
    refused(
        &heads,
        &llama.join("ref"),
        "num_attention_heads 8 against 4",
    );
    // A reference that ties its LM head to the embedding: the policy's own
    // LM head would never be merged.
    let tied = edited_copy(&llama.join("ref"), dir.path(), "tied", |c| {
        c["tie_word_embeddings"] = true.into()
    });
    let weights = tied.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = (st.tensors().into_iter())
        .filter(|(n, _)| n != "lm_head.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &weights).unwrap();
    refused(
        &llama.join("trained"),
        &tied,
        "tie_word_embeddings false against true",
    );
}
