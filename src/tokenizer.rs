//! The tokenizer of a Hugging Face checkpoint directory, bundled with what the
//! chat template needs: `tokenizer.json` (through the `tokenizers` crate) plus
//! the special tokens and chat template of `tokenizer_config.json` (or a
//! `chat_template.jinja` beside it, which wins, as in recent transformers).
//!
//! Policy and reference must share one tokenizer, otherwise their log-probs
//! are over different events: [`TokenizerBundle::same_as`] checks the
//! vocabulary and the special tokens and says what differs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::trajectory::template::ChatTemplate;
pub use crate::trajectory::template::SpecialTokens;
use crate::{Error, Result};

/// A `[start, end)` byte range of a text.
pub type ByteSpan = (usize, usize);

/// A tokenizer with its special tokens and chat template, loaded from a
/// Hugging Face model directory.
pub struct TokenizerBundle {
    dir: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
    /// Ids of added tokens flagged `special` (`<|im_end|>`, `<|eot_id|>`, …).
    special_ids: HashSet<u32>,
    compiled: OnceLock<std::result::Result<ChatTemplate, String>>,
}

impl std::fmt::Debug for TokenizerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerBundle")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// What [`TokenizerBundle::fingerprint`] summarises: equal fingerprints mean
/// the same token ↔ id map (added tokens included) and the same BOS and EOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub vocab_size: usize,
    pub hash: u64,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{}", self.hash, self.vocab_size)
    }
}

impl TokenizerBundle {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`
    /// (or `dir/special_tokens_map.json`) and `dir/chat_template.jinja`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::metadata(&dir).map_err(|e| Error::io(&dir, e))?;
        let tok_path = dir.join("tokenizer.json");
        if !is_file(&tok_path)? {
            return Err(Error::Tokenizer {
                path: tok_path,
                msg: "file not found (a Hugging Face `tokenizer.json` is required)".into(),
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| Error::Tokenizer {
                path: tok_path.clone(),
                msg: e.to_string(),
            })?;

        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let config = if is_file(&config_path)? {
            Some((read_json(&config_path)?, config_path))
        } else if is_file(&map_path)? {
            Some((read_json(&map_path)?, map_path))
        } else {
            None
        };
        let (special, mut chat_template) = match &config {
            Some((json, path)) => parse_config(json, path)?,
            None => (SpecialTokens::default(), None),
        };
        let jinja_path = dir.join("chat_template.jinja");
        if is_file(&jinja_path)? {
            let text =
                std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
            chat_template = Some(text);
        }

        let special_ids = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Ok(TokenizerBundle {
            dir,
            tokenizer,
            special,
            chat_template,
            special_ids,
            compiled: OnceLock::new(),
        })
    }

    /// The directory this bundle was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's
    /// post-processor (e.g. Llama-3's BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.err(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` (no special tokens added) with the byte range of
    /// `text` each token covers.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.err(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The text of token ids (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| self.err(e.to_string()))
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.special
            .bos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.special
            .eos
            .as_deref()
            .and_then(|t| self.token_to_id(t))
    }

    /// Whether `id` is an added token flagged special (an end-of-turn marker
    /// such as `<|im_end|>` or `<|eot_id|>` is).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The Jinja chat template source, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The chat template compiled once for this bundle.
    pub(crate) fn compiled_template(&self) -> Result<&ChatTemplate> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            self.err("has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja); use the plain renderer")
        })?;
        let compiled = self
            .compiled
            .get_or_init(|| ChatTemplate::new(source, &self.special));
        compiled
            .as_ref()
            .map_err(|msg| self.err(format!("chat template: {msg}")))
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// A stable hash of the token ↔ id map and the BOS/EOS tokens.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Fnv64::new();
        for (token, id) in self.sorted_vocab() {
            h.write(token.as_bytes());
            h.write(&[0xff]);
            h.write(&id.to_le_bytes());
        }
        for (field, token) in self.special_fields() {
            h.write(field.as_bytes());
            h.write(token.unwrap_or("\u{0}none").as_bytes());
            h.write(&[0xff]);
        }
        Fingerprint {
            vocab_size: self.vocab_size(),
            hash: h.finish(),
        }
    }

    /// `Ok` when both bundles map the same tokens to the same ids and name the
    /// same BOS and EOS; otherwise [`Error::Incompatible`] saying what differs.
    pub fn same_as(&self, other: &TokenizerBundle) -> Result<()> {
        if self.fingerprint() == other.fingerprint() {
            return Ok(());
        }
        let (a, b) = (self.dir.display(), other.dir.display());
        let mut diffs = Vec::new();
        if self.vocab_size() != other.vocab_size() {
            diffs.push(format!(
                "vocabulary size {} ({a}) vs {} ({b})",
                self.vocab_size(),
                other.vocab_size()
            ));
        }
        let theirs: HashMap<String, u32> = other.tokenizer.get_vocab(true);
        let ours = self.sorted_vocab();
        let mut changed = ours
            .iter()
            .filter(|(t, id)| theirs.get(*t) != Some(id))
            .map(|(t, id)| match theirs.get(t) {
                Some(other_id) => format!("token {t:?} has id {id} ({a}) but {other_id} ({b})"),
                None => format!("token {t:?} (id {id}) is in {a} but not in {b}"),
            });
        if let Some(first) = changed.next() {
            let more = changed.count();
            diffs.push(if more > 0 {
                format!("{first} (and {more} more tokens differ)")
            } else {
                first
            });
        } else if theirs.len() != ours.len() {
            diffs.push(format!(
                "{b} has {} tokens that {a} lacks",
                theirs.len() - ours.len()
            ));
        }
        for ((field, x), (_, y)) in self
            .special_fields()
            .into_iter()
            .zip(other.special_fields())
        {
            if x != y {
                diffs.push(format!(
                    "{field} {} ({a}) vs {} ({b})",
                    show_token(x),
                    show_token(y)
                ));
            }
        }
        if diffs.is_empty() {
            diffs.push("fingerprints differ".into());
        }
        Err(Error::Incompatible(format!(
            "the tokenizers differ: {}",
            diffs.join("; ")
        )))
    }

    fn sorted_vocab(&self) -> BTreeMap<String, u32> {
        self.tokenizer.get_vocab(true).into_iter().collect()
    }

    /// The special tokens that change what is scored: BOS starts plain
    /// renders and many templates, EOS ends turns. (Pad and unk do not.)
    fn special_fields(&self) -> [(&'static str, Option<&str>); 2] {
        [
            ("bos_token", self.special.bos.as_deref()),
            ("eos_token", self.special.eos.as_deref()),
        ]
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Tokenizer {
            path: self.dir.clone(),
            msg: msg.into(),
        }
    }
}

fn show_token(t: Option<&str>) -> String {
    t.map_or_else(|| "none".to_string(), |t| format!("`{t}`"))
}

/// Whether `path` is a file; `false` when it does not exist, an error naming
/// it when it cannot be looked at (no permission, a symlink loop) or is a
/// directory, rather than "not found".
fn is_file(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::Tokenizer {
            path: path.to_path_buf(),
            msg: "is a directory, not a file".into(),
        }),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        msg: format!("invalid JSON: {e}"),
    })
}

/// Special tokens and inline chat template of a `tokenizer_config.json`.
/// Tokens may be strings or `{"content": ...}` objects; the template may be a
/// string or a list of `{"name", "template"}` (the one named `default` wins).
fn parse_config(json: &Value, path: &Path) -> Result<(SpecialTokens, Option<String>)> {
    let bad = |msg: String| Error::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let obj = json
        .as_object()
        .ok_or_else(|| bad("expected a JSON object".into()))?;
    let token = |field: &str| -> Result<Option<String>> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(bad(format!("`{field}.content` must be a string"))),
            },
            Some(_) => Err(bad(format!(
                "`{field}` must be a string, an object with `content`, or null"
            ))),
        }
    };
    let special = SpecialTokens {
        bos: token("bos_token")?,
        eos: token("eos_token")?,
        pad: token("pad_token")?,
        unk: token("unk_token")?,
    };
    let template = match obj.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let named = |name: &str| {
                list.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == name)
                        .then(|| t.get("template")?.as_str().map(str::to_string))
                        .flatten()
                })
            };
            let first = list
                .iter()
                .find_map(|t| t.get("template")?.as_str().map(str::to_string));
            Some(named("default").or(first).ok_or_else(|| {
                bad("`chat_template` list has no entry with a string `template`".into())
            })?)
        }
        Some(_) => {
            return Err(bad(
                "`chat_template` must be a string or a list of {name, template}".into(),
            ));
        }
    };
    Ok((special, template))
}

/// FNV-1a, 64 bit: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    #[test]
    fn config_tokens_may_be_strings_objects_or_null() {
        let json = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "pad_token": null,
        });
        let (special, template) = parse_config(&json, Path::new("x")).unwrap();
        assert_eq!(special.bos.as_deref(), Some("<s>"));
        assert_eq!(special.eos.as_deref(), Some("</s>"));
        assert_eq!(special.pad, None);
        assert_eq!(template, None);
    }

    #[test]
    fn a_template_list_prefers_the_default_entry() {
        let json = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]});
        let (_, template) = parse_config(&json, Path::new("x")).unwrap();
        assert_eq!(template.as_deref(), Some("D"));
    }

    #[test]
    fn a_malformed_token_field_is_an_error_naming_it() {
        let json = serde_json::json!({"eos_token": 3});
        let err = parse_config(&json, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("eos_token"), "{err}");
    }

    #[test]
    fn a_bundle_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TokenizerBundle>();
    }

    #[test]
    fn the_tiny_llama_pair_shares_one_tokenizer() {
        let a = TokenizerBundle::load(fixture("tests/fixtures/models/llama/ref")).unwrap();
        let b = TokenizerBundle::load(fixture("tests/fixtures/models/llama/trained")).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        a.same_as(&b).unwrap();
        assert_eq!(a.bos_id(), Some(507));
        assert!(a.is_special(511));
    }

    fn llama_with_config(config: &str) -> (tempfile::TempDir, TokenizerBundle) {
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("tests/fixtures/models/llama/ref/tokenizer.json");
        std::fs::copy(src, dir.path().join("tokenizer.json")).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        let tok = TokenizerBundle::load(dir.path()).unwrap();
        (dir, tok)
    }

    #[test]
    fn a_different_pad_token_is_compatible_but_a_different_eos_is_not() {
        let (_a, base) = llama_with_config(
            r#"{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"}"#,
        );
        let (_b, pad) = llama_with_config(
            r#"{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|eot_id|>"}"#,
        );
        let (_c, eos) = llama_with_config(
            r#"{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}"#,
        );
        base.same_as(&pad).unwrap();
        let err = base.same_as(&eos).unwrap_err().to_string();
        assert!(
            err.contains("eos_token `<|eot_id|>`") && err.contains("`<|end_of_text|>`"),
            "{err}"
        );
        assert!(!err.contains("token \""), "vocabularies are equal: {err}");
    }

    #[test]
    fn a_directory_without_tokenizer_json_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = TokenizerBundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
