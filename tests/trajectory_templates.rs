//! Chat-template rendering against Hugging Face: the real Qwen3 and Llama-3
//! templates must render byte for byte what `apply_chat_template` renders
//! (`tests/fixtures/expected/chat_templates.json`), and the tiny model pairs'
//! oracle files fix the token ids and the action masks.

use std::path::{Path, PathBuf};

use padv::tokenizer::TokenizerBundle;
use padv::trajectory::{Body, Format, Record, RenderMode, encode, read_records, render_text};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A chat record from a bare message list, as the JSONL reader would make it.
fn chat_record(id: &str, messages: &Value) -> Record {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{id}.json"));
    std::fs::write(&path, serde_json::to_string(messages).unwrap()).unwrap();
    let mut records = read_records(&path, Some(Format::Messages)).unwrap();
    assert_eq!(records.len(), 1);
    records.remove(0).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn real_qwen3_and_llama3_templates_render_like_hugging_face() {
    let expected = load_json("tests/fixtures/expected/chat_templates.json");
    let mut bundles: Vec<(String, TokenizerBundle)> = Vec::new();
    for case in expected["cases"].as_array().unwrap() {
        let name = case["tokenizer"].as_str().unwrap();
        if !bundles.iter().any(|(n, _)| n == name) {
            let dir = root().join("tests/fixtures/tokenizers").join(name);
            bundles.push((name.to_string(), TokenizerBundle::load(dir).unwrap()));
        }
        let tok = &bundles.iter().find(|(n, _)| n == name).unwrap().1;
        let id = case["id"].as_str().unwrap();
        let record = chat_record(id, &case["messages"]);
        assert_eq!(RenderMode::default_for(tok), RenderMode::Template);

        let rendered = render_text(&record, tok, RenderMode::Template).unwrap();
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "{name}/{id}: render differs"
        );
        let enc = encode(&record, tok, RenderMode::Template, None).unwrap();
        assert_eq!(
            enc.token_ids,
            ids(&case["token_ids"]),
            "{name}/{id}: token ids differ"
        );

        // One action per assistant message, each its content plus the
        // end-of-turn token.
        let assistants: Vec<&Value> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .collect();
        assert_eq!(enc.actions.len(), assistants.len(), "{name}/{id}");
        let eot = match name {
            "qwen3" => "<|im_end|>",
            _ => "<|eot_id|>",
        };
        for (action, message) in enc.actions.iter().zip(assistants) {
            assert!(!action.truncated);
            let tokens = &enc.token_ids[action.start..action.end];
            let (last, content) = tokens.split_last().unwrap();
            assert_eq!(tok.id_to_token(*last).as_deref(), Some(eot), "{name}/{id}");
            assert_eq!(
                tok.decode(content).unwrap(),
                message["content"].as_str().unwrap(),
                "{name}/{id}"
            );
        }
    }
}

#[test]
fn tiny_pairs_match_the_oracle_token_ids_and_action_masks() {
    let path = root().join("tests/fixtures/inputs/tiny_trajectories.jsonl");
    let records: Vec<Record> = read_records(&path, None)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(records.len(), 6);
    let names = [
        "llama",
        "llama3scaled",
        "qwen2",
        "mistral",
        "qwen3",
        "llama_bf16",
    ];
    for name in names {
        let expected = load_json(&format!("tests/fixtures/expected/tiny_{name}.json"));
        let dir: PathBuf = root().join("tests/fixtures/models").join(name).join("ref");
        let tok = TokenizerBundle::load(&dir).unwrap();
        let trained = TokenizerBundle::load(dir.parent().unwrap().join("trained")).unwrap();
        tok.same_as(&trained).unwrap();
        let mode = RenderMode::default_for(&tok);
        assert_eq!(mode, RenderMode::Template, "{name}");
        for (record, want) in records.iter().zip(expected["records"].as_array().unwrap()) {
            assert_eq!(record.id, want["id"].as_str().unwrap());
            let enc = encode(record, &tok, mode, None).unwrap();
            assert_eq!(
                enc.token_ids,
                ids(&want["token_ids"]),
                "{name}/{}: token ids",
                record.id
            );
            match &record.body {
                Body::Chat(_) => {
                    let rendered = render_text(record, &tok, mode).unwrap();
                    assert_eq!(rendered, want["rendered"].as_str().unwrap(), "{name}");
                    let mask: Vec<u8> = want["action_mask"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u8)
                        .collect();
                    assert_eq!(enc.action_mask(), mask, "{name}/{}: action mask", record.id);
                }
                _ => assert!(enc.actions.is_empty()),
            }
        }
    }
}

#[test]
fn a_template_file_beside_the_config_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("tests/fixtures/models/qwen3/ref");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}|{{ m.content }}<|im_end|>{% endfor %}",
    )
    .unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let record = chat_record(
        "t",
        &serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
    );
    assert_eq!(
        render_text(&record, &tok, RenderMode::Template).unwrap(),
        "<|im_start|>user|hi<|im_end|><|im_start|>assistant|yo<|im_end|>"
    );
}

#[test]
fn different_tokenizers_are_incompatible_and_the_error_says_why() {
    let qwen = TokenizerBundle::load(root().join("tests/fixtures/models/qwen3/ref")).unwrap();
    let llama = TokenizerBundle::load(root().join("tests/fixtures/models/llama/ref")).unwrap();
    assert_ne!(qwen.fingerprint(), llama.fingerprint());
    let err = qwen.same_as(&llama).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, padv::Error::Incompatible(_)), "{msg}");
    assert!(msg.contains("eos_token `<|im_end|>`"), "{msg}");
    assert!(msg.contains("bos_token none"), "{msg}");
    assert!(msg.contains("token "), "{msg}");
}
