//! Loading checkpoints: sharded safetensors, f16 weights, and every error
//! path a user can hit (unknown architecture, missing or mis-shaped tensor,
//! truncated or missing shard, incompatible pair).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use padv::backend::{Device, SeqRequest, open_pair};
use padv::model::Model;
use padv::pipeline::{Scorer, ScorerOptions};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// Copy the small files of a model dir (config, tokenizer) into `dst`.
fn copy_meta(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json" || x == "jinja") {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// All tensors of a single-file checkpoint as (name → (dtype, shape, bytes)).
fn tensors(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write(path: &Path, t: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn score(policy: &Path, reference: &Path, ids: &[u32]) -> Vec<f32> {
    let p = Arc::new(Model::load(policy).unwrap());
    let r = Arc::new(Model::load(reference).unwrap());
    let mut s = open_pair(Device::Cpu, p, r).unwrap();
    let out = s
        .score(&[SeqRequest {
            token_ids: ids.to_vec(),
            score_mask: None,
        }])
        .unwrap();
    out[0]
        .logp_policy
        .iter()
        .chain(&out[0].logp_reference)
        .copied()
        .collect()
}

const IDS: [u32; 12] = [507, 5, 17, 300, 42, 99, 256, 401, 7, 7, 0, 1];

#[test]
fn a_sharded_checkpoint_scores_exactly_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama/ref");
    let dst = dir.path().join("sharded");
    copy_meta(&src, &dst);
    let all = tensors(&src);
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = all
        .into_iter()
        .partition(|(n, _)| n.contains("layers.0") || n.contains("embed"));
    write(&dst.join("model-00001-of-00002.safetensors"), &a);
    write(&dst.join("model-00002-of-00002.safetensors"), &b);
    let mut map = serde_json::Map::new();
    for n in a.keys() {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for n in b.keys() {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let want = score(&src, &src, &IDS);
    let got = score(&dst, &dst, &IDS);
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert!(w.is_nan() && g.is_nan() || w == g, "{w} vs {g}");
    }

    // A missing shard is named.
    std::fs::remove_file(dst.join("model-00002-of-00002.safetensors")).unwrap();
    let err = Model::load(&dst).err().unwrap().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn an_f16_checkpoint_scores_like_f32_weights_holding_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama/ref");
    let (f16_dir, f32_dir) = (dir.path().join("f16"), dir.path().join("f32"));
    copy_meta(&src, &f16_dir);
    copy_meta(&src, &f32_dir);
    let mut h = tensors(&src);
    let mut f = h.clone();
    for (name, (d, _, b)) in h.iter_mut() {
        let vals: &[f32] = bytemuck::cast_slice(b);
        let rounded: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
        let (_, _, fb) = f.get_mut(name).unwrap();
        *fb = rounded
            .iter()
            .flat_map(|v| v.to_f32().to_le_bytes())
            .collect();
        *b = rounded.iter().flat_map(|v| v.to_le_bytes()).collect();
        *d = Dtype::F16;
    }
    write(&f16_dir.join("model.safetensors"), &h);
    write(&f32_dir.join("model.safetensors"), &f);
    let a = score(&f16_dir, &f16_dir, &IDS);
    let b = score(&f32_dir, &f32_dir, &IDS);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x.is_nan() && y.is_nan() || (x - y).abs() < 1e-5,
            "{x} vs {y}"
        );
    }
    assert_eq!(
        Model::load(&f16_dir).unwrap().dtype(),
        padv::model::DType::F16
    );
}

fn broken_copy(
    edit: impl FnOnce(&Path, &mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("m");
    copy_meta(&fixture("llama/ref"), &dst);
    let mut t = tensors(&fixture("llama/ref"));
    edit(&dst, &mut t);
    write(&dst.join("model.safetensors"), &t);
    (dir, dst)
}

#[test]
fn loading_errors_name_the_architecture_tensor_or_file() {
    // Unknown architecture lists the supported ones.
    let (_d, m) = broken_copy(|dir, _| {
        let p = dir.join("config.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("LlamaForCausalLM", "GPT2LMHeadModel");
        std::fs::write(p, s).unwrap();
    });
    let e = Model::load(&m).err().unwrap().to_string();
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("Qwen3ForCausalLM"),
        "{e}"
    );

    // Missing tensor.
    let (_d, m) = broken_copy(|_, t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = Model::load(&m).err().unwrap().to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );

    // Wrong shape.
    let (_d, m) = broken_copy(|_, t| {
        let (_, s, b) = t.get_mut("model.norm.weight").unwrap();
        *s = vec![32];
        b.truncate(32 * 4);
    });
    let e = Model::load(&m).err().unwrap().to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("[32]") && e.contains("[64]"),
        "{e}"
    );

    // Truncated file.
    let (_d, m) = broken_copy(|_, _| {});
    let p = m.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Model::load(&m).err().unwrap().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // Not a directory.
    let e = Model::load(Path::new("/nonexistent/model"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/nonexistent/model"), "{e}");
}

#[test]
fn a_pair_with_different_tokenizers_or_vocabularies_is_refused() {
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models/ref");
    let e = Scorer::load(&fixture("llama/trained"), &toy, ScorerOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("incompatible") || e.contains("differ"), "{e}");
    // qwen2 (vocab 576) against llama (512): same-size tokenizers, different model vocab.
    let p = Arc::new(Model::load(&fixture("qwen2/trained")).unwrap());
    let r = Arc::new(Model::load(&fixture("llama/ref")).unwrap());
    let e = open_pair(Device::Cpu, p, r).err().unwrap().to_string();
    assert!(
        e.contains("vocab_size") && e.contains("576") && e.contains("512"),
        "{e}"
    );
}

#[test]
fn a_text_only_gemma4_directory_scores_exactly_like_the_hub_checkpoint() {
    // `Gemma4ForCausalLM` as transformers saves the text model alone: flat
    // config, `model.*` names, no towers.
    let hub = fixture("gemma4/ref");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("text");
    copy_meta(&hub, &dir);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hub.join("config.json")).unwrap()).unwrap();
    let mut flat = cfg["text_config"].clone();
    flat["architectures"] = serde_json::json!(["Gemma4ForCausalLM"]);
    std::fs::write(dir.join("config.json"), flat.to_string()).unwrap();
    let text: BTreeMap<_, _> = tensors(&hub)
        .into_iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("model.language_model.")
                .map(|rest| (format!("model.{rest}"), t))
        })
        .collect();
    write(&dir.join("model.safetensors"), &text);
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500).collect();
    let a = score(&hub, &hub, &ids);
    let b = score(&dir, &dir, &ids);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b).skip(1) {
        assert_eq!(x.to_bits(), y.to_bits());
    }
}

#[test]
fn tensors_the_config_does_not_use_are_an_error_naming_them() {
    let src = fixture("llama/ref");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("short");
    copy_meta(&src, &dir);
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = serde_json::json!(1);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = Model::load(&dir).err().expect("must fail").to_string();
    assert!(
        e.contains("model.layers.1.") && e.contains("num_hidden_layers"),
        "{e}"
    );
    // A Gemma 4 hub checkpoint's towers are ignored, not reported.
    assert!(Model::load(&fixture("gemma4/ref")).is_ok());
}
