//! Saying what is wrong with a safetensors header that the `safetensors`
//! crate refused. Its errors do not always name the tensor at fault
//! (`TensorInvalidInfo`, `ValidationOverflow`), name the wrong one when a
//! key appears twice (JSON keeps the last, and the offsets then look
//! wrong for the next tensor), and say nothing of whether the file is
//! short. This reads the header again, keeping every key, and reports the
//! first problem with the tensor's name, the numbers involved and, only
//! when the sizes say so, that the file looks truncated. Only called on
//! failure, so it costs nothing for a good checkpoint.

use std::fmt;

use safetensors::Dtype;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The header's entries in file order, duplicates kept.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    out.push(kv);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One tensor's declared layout.
struct Declared {
    name: String,
    start: u64,
    end: u64,
}

/// The first thing wrong with the safetensors file `bytes`, in words;
/// `None` when nothing is found here (the caller then shows the crate's
/// own error).
pub fn problem(bytes: &[u8]) -> Option<String> {
    let Some(len) = bytes.get(..8) else {
        return Some(format!(
            "the file is {} bytes, shorter than the 8-byte header length (truncated?)",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(len.try_into().ok()?);
    let rest = (bytes.len() - 8) as u64;
    if n > rest {
        return Some(format!(
            "the header is said to be {n} bytes, but only {rest} follow (truncated?)"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let text = match std::str::from_utf8(header) {
        Ok(t) => t,
        Err(e) => {
            return Some(format!(
                "the header is not UTF-8 (at byte {} of it)",
                e.valid_up_to()
            ));
        }
    };
    let entries = match serde_json::from_str::<Entries>(text) {
        Ok(e) => e.0,
        Err(e) => return Some(format!("the header is not a JSON object: {e}")),
    };
    let mut seen = std::collections::HashSet::new();
    let mut declared = Vec::new();
    for (name, v) in &entries {
        if !seen.insert(name.as_str()) {
            return Some(format!("tensor `{name}` appears twice in the header"));
        }
        if name == "__metadata__" {
            continue;
        }
        match tensor(name, v) {
            Ok(d) => declared.push(d),
            Err(why) => return Some(format!("tensor `{name}`: {why}")),
        }
    }
    declared.sort_by_key(|d| (d.start, d.end));
    let mut at = 0u64;
    let mut prev: Option<&str> = None;
    for d in &declared {
        if d.start != at {
            let after = prev.map_or("the start of the data".to_string(), |p| {
                format!("tensor `{p}`, which ends at byte {at}")
            });
            let what = if d.start > at { "a gap" } else { "an overlap" };
            return Some(format!(
                "tensor `{}`: data_offsets [{}, {}] leave {what} after {after}",
                d.name, d.start, d.end
            ));
        }
        at = d.end;
        prev = Some(&d.name);
    }
    let data = rest - n;
    if at > data {
        let last = prev.unwrap_or_default();
        return Some(format!(
            "the tensors' data end at byte {at} (tensor `{last}`), but the file holds {data} bytes of data (truncated?)"
        ));
    }
    if at < data {
        return Some(format!(
            "{} bytes of data after the last tensor (`{}`, ending at byte {at})",
            data - at,
            prev.unwrap_or_default()
        ));
    }
    None
}

/// A tensor entry's dtype, shape and offsets, checked against each other.
fn tensor(name: &str, v: &Value) -> Result<Declared, String> {
    let dtype_name = v["dtype"].as_str().ok_or("no `dtype` string".to_string())?;
    let dtype: Dtype = serde_json::from_value(Value::String(dtype_name.into()))
        .map_err(|_| format!("unknown dtype `{dtype_name}`"))?;
    let shape = v["shape"]
        .as_array()
        .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or("`shape` is not a list of non-negative integers".to_string())?;
    let offsets = v["data_offsets"]
        .as_array()
        .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .filter(|o| o.len() == 2)
        .ok_or("`data_offsets` is not two non-negative integers".to_string())?;
    let (start, end) = (offsets[0], offsets[1]);
    if end < start {
        return Err(format!(
            "data_offsets [{start}, {end}] end before they start"
        ));
    }
    let bits = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.bitsize() as u64))
        .ok_or(format!(
            "shape {shape:?} of {dtype:?} is too large to address"
        ))?;
    if bits % 8 != 0 {
        return Err(format!(
            "shape {shape:?} of {dtype:?} is not a whole number of bytes"
        ));
    }
    if bits / 8 != end - start {
        return Err(format!(
            "shape {shape:?} of {dtype:?} is {} bytes, but data_offsets [{start}, {end}] hold {}",
            bits / 8,
            end - start
        ));
    }
    Ok(Declared {
        name: name.to_string(),
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file from a header text and `data` bytes of data.
    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    #[test]
    fn each_problem_names_its_tensor_and_only_short_files_say_truncated() {
        let t = |name: &str, dtype: &str, shape: &str, s: u64, e: u64| {
            format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{s},{e}]}}"#)
        };
        let ok = format!(
            "{{{},{}}}",
            t("a", "F32", "[2]", 0, 8),
            t("b", "F32", "[1]", 8, 12)
        );
        assert_eq!(problem(&file(&ok, 12)), None);
        let cases = [
            (
                format!("{{{}}}", t("a", "F33", "[2]", 0, 8)),
                8,
                "tensor `a`: unknown dtype `F33`",
            ),
            (
                format!(
                    "{{{},{}}}",
                    t("a", "F32", "[3]", 0, 8),
                    t("b", "F32", "[1]", 8, 12)
                ),
                12,
                "tensor `a`: shape [3] of F32 is 12 bytes, but data_offsets [0, 8] hold 8",
            ),
            (
                format!(
                    "{{{},{}}}",
                    t("a", "F32", "[2]", 0, 8),
                    t("a", "F32", "[1]", 8, 12)
                ),
                12,
                "tensor `a` appears twice",
            ),
            (
                format!(
                    "{{{},{}}}",
                    t("a", "F32", "[2]", 0, 8),
                    t("b", "F32", "[1]", 12, 16)
                ),
                16,
                "tensor `b`: data_offsets [12, 16] leave a gap after tensor `a`",
            ),
            (
                format!("{{{}}}", t("a", "F32", "[4294967296,4294967296,8]", 0, 8)),
                8,
                "tensor `a`: shape [4294967296, 4294967296, 8] of F32 is too large",
            ),
            (ok.clone(), 10, "(truncated?)"),
        ];
        for (header, data, want) in cases {
            let got = problem(&file(&header, data)).unwrap_or_default();
            assert!(got.contains(want), "{header}: `{got}` lacks `{want}`");
            if !want.contains("truncated") {
                assert!(!got.contains("truncated"), "{got}");
            }
        }
        assert!(problem(&[1, 0]).unwrap().contains("truncated"));
        let mut short = file(&ok, 12);
        short.truncate(20);
        assert!(problem(&short).unwrap().contains("said to be"));
    }
}
