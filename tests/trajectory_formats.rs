//! The input formats (samples in `tests/fixtures/formats/`): what each reads
//! into, what stays as passthrough, which messages are actions under each
//! renderer, and the errors a bad record gives.

use std::path::{Path, PathBuf};

use padv::tokenizer::TokenizerBundle;
use padv::trajectory::{
    Body, Format, Record, RenderMode, check_token_ids, encode, read_records, render_text,
};
use padv::{Error, Result};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sample(name: &str) -> PathBuf {
    root().join("tests/fixtures/formats").join(name)
}

fn tiny(name: &str) -> TokenizerBundle {
    TokenizerBundle::load(root().join("tests/fixtures/models").join(name).join("ref")).unwrap()
}

fn real(name: &str) -> TokenizerBundle {
    TokenizerBundle::load(root().join("tests/fixtures/tokenizers").join(name)).unwrap()
}

fn read_ok(path: &Path) -> Vec<Record> {
    read_records(path, None)
        .unwrap()
        .into_iter()
        .collect::<Result<_>>()
        .unwrap()
}

fn action_messages(record: &Record, tok: &TokenizerBundle, mode: RenderMode) -> Vec<usize> {
    let enc = encode(record, tok, mode, None).unwrap();
    enc.actions.iter().map(|a| a.message_index).collect()
}

#[test]
fn core_records_keep_their_other_fields_and_add_special_tokens_by_default() {
    let records = read_ok(&sample("records.jsonl"));
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["text-1", "2", "ids-1"]);
    assert_eq!(records[0].format, Format::Text);
    assert_eq!(
        records[0].passthrough,
        json!({"source": "code"}).as_object().unwrap().clone()
    );
    assert_eq!(records[2].format, Format::Tokens);
    assert!(records[1].location.ends_with("records.jsonl:2"));

    let tok = tiny("llama");
    let bos = tok.bos_id().unwrap();
    let with = encode(&records[0], &tok, RenderMode::Template, None).unwrap();
    assert_eq!(with.token_ids[0], bos);
    assert!(with.actions.is_empty());
    let without = encode(&records[1], &tok, RenderMode::Template, None).unwrap();
    assert_eq!(without.token_ids, tok.encode("import os", false).unwrap());
    let direct = encode(&records[2], &tok, RenderMode::Plain, None).unwrap();
    assert_eq!(direct.token_ids, [5, 17, 300, 42, 99]);
    assert!(direct.actions.is_empty());
}

#[test]
fn token_records_use_their_spans_as_actions() {
    let records = read_ok(&sample("tokens.jsonl"));
    let tok = tiny("qwen3");
    let enc = encode(&records[0], &tok, RenderMode::Template, None).unwrap();
    let spans: Vec<_> = enc
        .actions
        .iter()
        .map(|a| (a.message_index, a.start, a.end, a.truncated))
        .collect();
    assert_eq!(spans, [(0, 2, 4, false), (1, 5, 8, false)]);
    assert_eq!(records[0].success(), Some(true));
    assert!(
        encode(&records[1], &tok, RenderMode::Template, None)
            .unwrap()
            .actions
            .is_empty()
    );
    assert_eq!(records[1].success(), Some(false));
}

#[test]
fn messages_jsonl_reads_tool_calls_null_content_and_passthrough() {
    let records = read_ok(&sample("messages.jsonl"));
    assert_eq!(records.len(), 2);
    let chat = &records[0];
    assert_eq!(chat.format, Format::Messages);
    let messages = chat.messages().unwrap();
    assert_eq!(messages.len(), 7);
    assert_eq!(messages[4].content, "");
    assert_eq!(messages[4].tool_calls[0].name, "buy");
    assert_eq!(
        messages[2].tool_calls[0].arguments,
        json!("{\"query\": \"red mug\"}")
    );
    let actions: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_action)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(actions, [2, 4, 6]);
    let keys: Vec<&str> = chat.passthrough.keys().map(String::as_str).collect();
    assert_eq!(keys, ["reward", "split"]);
    assert_eq!(chat.success(), Some(true));
    assert_eq!(records[1].id, "messages.jsonl:2");
    assert_eq!(records[1].success(), Some(false));

    // An empty assistant reply is still a step: just its end-of-turn token.
    let tok = tiny("qwen3");
    let enc = encode(&records[1], &tok, RenderMode::Template, None).unwrap();
    assert_eq!(enc.actions.len(), 1);
    let a = enc.actions[0];
    assert_eq!(
        enc.token_ids[a.start..a.end],
        [tok.token_to_id("<|im_end|>").unwrap()]
    );
}

#[test]
fn real_templates_render_tool_calls_like_jinja2_and_the_calls_are_part_of_the_action() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(sample("expected_renders.json")).unwrap())
            .unwrap();
    let tau2 = read_records(&sample("tau2_results.json"), None)
        .unwrap()
        .remove(0)
        .unwrap();
    let chat = read_ok(&sample("messages.jsonl")).remove(0);
    for name in ["qwen3", "llama3"] {
        let tok = real(name);
        for (record, id) in [
            (&tau2, "tau2_results.json:sim-1"),
            (&chat, "messages.jsonl:chat-1"),
        ] {
            let case = expected["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["tokenizer"] == name && c["id"] == id)
                .unwrap();
            let rendered = render_text(record, &tok, RenderMode::Template).unwrap();
            assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{name} {id}");
        }
    }

    let tok = real("qwen3");
    let enc = encode(&tau2, &tok, RenderMode::Template, None).unwrap();
    let text = |i: usize| {
        let a = enc.actions[i];
        tok.decode(&enc.token_ids[a.start..a.end]).unwrap()
    };
    assert_eq!(
        action_messages(&tau2, &tok, RenderMode::Template),
        [0, 2, 4, 6, 8]
    );
    assert_eq!(
        text(1),
        "<tool_call>\n{\"name\": \"get_reservation_details\", \"arguments\": {\"reservation_id\": \"ABC123\"}}\n</tool_call><|im_end|>"
    );
    assert!(
        text(3).starts_with("Cancelling.\n<tool_call>\n"),
        "{}",
        text(3)
    );
    assert!(text(3).ends_with("</tool_call><|im_end|>"), "{}", text(3));
    assert_eq!(text(4), "Done: ABC123 is cancelled.<|im_end|>");

    // Llama-3's template drops tool calls: the call's step is its end-of-turn token.
    let tok = real("llama3");
    let enc = encode(&tau2, &tok, RenderMode::Template, None).unwrap();
    let a = enc.actions[1];
    assert_eq!(
        tok.decode(&enc.token_ids[a.start..a.end]).unwrap(),
        "<|eot_id|>"
    );
    assert!(!a.truncated);
}

#[test]
fn tau2_results_give_one_result_per_simulation_with_task_and_reward() {
    let path = sample("tau2_results.json");
    let results = read_records(&path, None).unwrap();
    assert_eq!(results.len(), 3);
    let sim1 = results[0].as_ref().unwrap();
    assert_eq!(sim1.id, "sim-1");
    assert_eq!(sim1.format, Format::Tau2);
    assert!(
        sim1.location
            .ends_with("tau2_results.json: simulation sim-1")
    );
    let keys: Vec<&str> = sim1.passthrough.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["task_id", "trial", "termination_reason", "reward_info"]
    );
    assert_eq!(sim1.success(), Some(true));
    assert_eq!(results[1].as_ref().unwrap().success(), Some(false));
    let err = results[2].as_ref().unwrap_err().to_string();
    assert!(err.contains("tau2_results.json: simulation sim-3"), "{err}");
    assert!(
        err.contains("messages[1].role: unknown role `customer`"),
        "{err}"
    );
    // Forcing the format gives the same records; forcing another is refused.
    let forced = read_records(&path, Some(Format::Tau2)).unwrap();
    assert_eq!(forced[0].as_ref().unwrap(), sim1);
    let err = read_records(&path, Some(Format::Messages))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("τ²-bench results document"), "{err}");
}

#[test]
fn plain_rendering_follows_the_reference_renderer() {
    let records = read_records(&sample("tau2_results.json"), None).unwrap();
    let sim1 = records[0].as_ref().unwrap();
    let tok = tiny("llama");
    let want = "[assistant]: Hi! How can I help you today?\n[user]: Cancel reservation ABC123, I'm Mia Li.\n[assistant]: tool_call(get_reservation_details, {'reservation_id': 'ABC123'})\n[tool]: {\"reservation_id\": \"ABC123\", \"user_id\": \"mia_li_3668\", \"cabin\": \"economy\"}\n[assistant]: I found it. Shall I cancel it?\n[user]: Yes.\n[assistant]: Cancelling.\ntool_call(cancel_reservation, {'reservation_id': 'ABC123', 'refund': True, 'note': \"it's ok\"})\n[tool]: {\"status\": \"cancelled\"}\n[assistant]: Done: ABC123 is cancelled.";
    assert_eq!(render_text(sim1, &tok, RenderMode::Plain).unwrap(), want);
    let sim2 = records[1].as_ref().unwrap();
    assert!(
        render_text(sim2, &tok, RenderMode::Plain)
            .unwrap()
            .ends_with("\n[assistant]: [assistant action]")
    );

    // BOS, then each message tokenized on its own; an action is a whole message.
    let enc = encode(sim1, &tok, RenderMode::Plain, None).unwrap();
    assert_eq!(enc.token_ids[0], tok.bos_id().unwrap());
    let pieces: Vec<&str> = want.split_inclusive('\n').collect();
    assert_eq!(
        action_messages(sim1, &tok, RenderMode::Plain),
        [0, 2, 4, 6, 8]
    );
    let first = enc.actions[0];
    assert_eq!(first.start, 1);
    assert_eq!(
        enc.token_ids[first.start..first.end],
        tok.encode(pieces[0].trim_end_matches('\n'), false).unwrap()[..]
    );
    let last = enc.actions[4];
    assert_eq!(last.end, enc.token_ids.len());
    assert_eq!(
        enc.token_ids[last.start..last.end],
        tok.encode("\n[assistant]: Done: ABC123 is cancelled.", false)
            .unwrap()[..]
    );

    // Without a BOS token (Qwen) the first message starts the sequence.
    let enc = encode(sim1, &tiny("qwen3"), RenderMode::Plain, None).unwrap();
    assert_eq!(enc.actions[0].start, 0);
}

#[test]
fn who_and_when_directories_record_the_split_and_score_the_agents_messages() {
    let records = read_ok(&sample("who_and_when"));
    assert_eq!(records.len(), 2);
    let (ag, hc) = (&records[0], &records[1]);
    assert_eq!(ag.id, "ag-0007");
    assert_eq!(hc.id, "hc-0001");
    assert_eq!(hc.format, Format::WhoAndWhen);
    assert_eq!(hc.passthrough["split"], "Hand-Crafted");
    assert_eq!(ag.passthrough["split"], "Algorithm-Generated");
    assert_eq!(hc.passthrough["file"], "Hand-Crafted/1.json");
    assert_eq!(hc.passthrough["mistake_step"], "3");
    assert_eq!(hc.passthrough["mistake_agent"], "WebSurfer");
    assert_eq!(hc.passthrough["question_ID"], "hc-0001");
    assert!(!hc.passthrough.contains_key("history"));

    for tok in [tiny("qwen3"), tiny("llama")] {
        for mode in [RenderMode::Plain, RenderMode::Template] {
            // Hand-Crafted: not the opening human question, not the empty message.
            assert_eq!(action_messages(hc, &tok, mode), [1, 2, 3, 5]);
            // Algorithm-Generated: every non-empty message, the terminal's too.
            assert_eq!(action_messages(ag, &tok, mode), [0, 1, 2, 3]);
        }
    }
    let want = "[human]: Which museum in Paris has the most visitors?\n\n[Orchestrator (thought)]: Initial plan: ask WebSurfer to search for museum visitor statistics.\n[Orchestrator (-> WebSurfer)]: Search for the most visited museum in Paris.\n[WebSurfer]: I typed 'most visited museum Paris' into the search bar. The top result says: Musee d'Orsay.\n[Orchestrator (thought)]: \n[Orchestrator (final answer)]: FINAL ANSWER: Musee d'Orsay";
    assert_eq!(
        render_text(hc, &tiny("qwen3"), RenderMode::Plain).unwrap(),
        want
    );
    // The chat template sees agents as assistants and the human as the user.
    let rendered = render_text(hc, &tiny("qwen3"), RenderMode::Template).unwrap();
    assert!(
        rendered.starts_with("<|im_start|>user\nWhich museum"),
        "{rendered}"
    );
    assert!(
        rendered.contains("<|im_start|>assistant\nI typed"),
        "{rendered}"
    );
}

#[test]
fn a_single_who_and_when_file_is_detected_and_knows_its_split() {
    let records = read_ok(&sample("who_and_when/Hand-Crafted/1.json"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].format, Format::WhoAndWhen);
    assert_eq!(records[0].passthrough["split"], "Hand-Crafted");
    assert_eq!(
        action_messages(&records[0], &tiny("qwen3"), RenderMode::Plain),
        [1, 2, 3, 5]
    );
}

#[test]
fn a_bare_message_list_is_one_chat_record() {
    let path = root().join("tests/fixtures/inputs/chat_multi.json");
    let records = read_ok(&path);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, "chat_multi");
    assert!(matches!(records[0].body, Body::Chat(_)));
}

#[test]
fn bad_lines_are_errors_naming_line_and_field_while_good_lines_read() {
    let results = read_records(&sample("bad.jsonl"), None).unwrap();
    let outcome: Vec<std::result::Result<String, String>> = results
        .iter()
        .map(|r| match r {
            Ok(rec) => Ok(rec.id.clone()),
            Err(e) => Err(e.to_string()),
        })
        .collect();
    assert_eq!(outcome.len(), 13, "{outcome:#?}");
    let err = |i: usize| outcome[i].clone().unwrap_err();
    assert_eq!(outcome[0], Ok("ok".into()));
    assert!(err(1).contains("bad.jsonl:2: malformed JSON"), "{}", err(1));
    assert!(
        err(2).contains("bad.jsonl:3: messages[0].role: missing"),
        "{}",
        err(2)
    );
    assert!(
        err(3).contains("bad.jsonl:4: messages[0].content: missing"),
        "{}",
        err(3)
    );
    assert!(
        err(4).contains("bad.jsonl:5: messages[0].role: unknown role `robot`"),
        "{}",
        err(4)
    );
    assert!(
        err(5).contains("bad.jsonl:6: messages: empty trajectory"),
        "{}",
        err(5)
    );
    // Line 7 is blank: no record.
    assert!(
        err(6).contains("bad.jsonl:8: action_spans[1]: [1, 3) overlaps"),
        "{}",
        err(6)
    );
    assert_eq!(outcome[7], Ok("toolcall-null-content".into()));
    assert!(
        err(8).contains("bad.jsonl:10: missing one of `text`"),
        "{}",
        err(8)
    );
    assert!(
        err(9).contains("bad.jsonl:11: expected a JSON object, found a list"),
        "{}",
        err(9)
    );
    assert!(
        err(10).contains("bad.jsonl:12: token_ids[1]"),
        "{}",
        err(10)
    );
    assert!(
        err(11).contains("bad.jsonl:13: action_spans[0]: [2, 2) is empty"),
        "{}",
        err(11)
    );
    assert!(
        err(12).contains("bad.jsonl:14: action_spans[0]: [1, 4) ends past the 3 token ids"),
        "{}",
        err(12)
    );
    for r in results.iter().flatten() {
        if r.id == "toolcall-null-content" {
            let enc = encode(r, &tiny("qwen3"), RenderMode::Plain, None).unwrap();
            assert_eq!(enc.actions.len(), 1);
        }
    }
}

#[test]
fn forcing_a_format_rejects_records_of_another_kind() {
    let results = read_records(&sample("records.jsonl"), Some(Format::Messages)).unwrap();
    assert_eq!(results.len(), 3);
    for r in &results {
        let msg = r.as_ref().unwrap_err().to_string();
        assert!(msg.contains("expected a messages record"), "{msg}");
    }
    let results = read_records(&sample("records.jsonl"), Some(Format::Text)).unwrap();
    assert!(results[0].is_ok() && results[1].is_ok());
    let msg = results[2].as_ref().unwrap_err().to_string();
    assert!(msg.contains("expected a text record"), "{msg}");
    assert!(read_records(&sample("records.jsonl"), Some(Format::Tau2)).is_err());
    assert!(read_records(&sample("who_and_when"), Some(Format::Messages)).is_err());
    let err = read_records(&sample("absent.jsonl"), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
}

#[test]
fn left_truncation_keeps_every_action_and_flags_the_cut_ones() {
    let path = root().join("tests/fixtures/inputs/tiny_trajectories.jsonl");
    let record = read_ok(&path)
        .into_iter()
        .find(|r| r.id == "chat_multi")
        .unwrap();
    let tok = tiny("qwen3");
    let full = encode(&record, &tok, RenderMode::Template, None).unwrap();
    let n = full.token_ids.len();
    let (a0, a1) = (full.actions[0], full.actions[1]);

    let cut = a0.start + 2;
    let part = encode(&record, &tok, RenderMode::Template, Some(n - cut)).unwrap();
    assert_eq!(part.token_ids, full.token_ids[cut..]);
    assert_eq!(part.actions.len(), 2);
    assert!(part.actions[0].truncated);
    assert_eq!(
        (part.actions[0].start, part.actions[0].end),
        (0, a0.end - cut)
    );
    assert!(!part.actions[1].truncated);
    assert_eq!(part.actions[1].start, a1.start - cut);

    // A cut right before an action's first token: the token is kept but
    // its prediction is not (nothing precedes it), so the action is cut too.
    let at = encode(&record, &tok, RenderMode::Template, Some(n - a1.start)).unwrap();
    assert_eq!(at.actions[1].start, 0);
    assert!(at.actions[1].truncated);

    let whole = encode(&record, &tok, RenderMode::Template, Some(n - a0.end)).unwrap();
    assert_eq!(whole.actions.len(), 2);
    assert!(whole.actions[0].truncated && whole.actions[0].is_empty());
    assert!(!whole.actions[1].truncated);
    assert_eq!(
        encode(&record, &tok, RenderMode::Template, Some(n)).unwrap(),
        full
    );
}

#[test]
fn out_of_vocabulary_ids_are_found_by_the_helper() {
    let records = read_ok(&sample("tokens.jsonl"));
    let Body::Tokens { token_ids, .. } = &records[0].body else {
        panic!("not a token record")
    };
    check_token_ids(&records[0].location, token_ids, 512).unwrap();
    let err = check_token_ids(&records[0].location, token_ids, 15).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("token_ids[5] = 15 is out of the vocabulary (size 15)")
    );
}

#[test]
fn the_plain_renderer_is_the_default_without_a_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("tests/fixtures/models/llama/ref");
    std::fs::copy(
        src.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|eot_id|>"}"#,
    )
    .unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert_eq!(RenderMode::default_for(&tok), RenderMode::Plain);
    assert_eq!(tok.bos_id(), Some(507));
    let record = read_ok(&sample("messages.jsonl")).remove(0);
    let err = encode(&record, &tok, RenderMode::Template, None).unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn an_action_that_is_the_first_token_alone_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let lines = [
        r#"{"id": "a", "token_ids": [10, 11, 12, 13], "action_spans": [[0, 3]]}"#,
        r#"{"id": "b", "token_ids": [10, 11, 12, 13], "action_spans": [[0, 1], [2, 4]]}"#,
        r#"{"id": "c", "token_ids": [10, 11, 12, 13], "action_spans": [[1, 3]]}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let tok = tiny("qwen3");
    let warnings: Vec<Vec<String>> = read_ok(&path)
        .iter()
        .map(|r| {
            let enc = encode(r, &tok, RenderMode::Plain, None).unwrap();
            enc.warnings.iter().map(|w| w.text.clone()).collect()
        })
        .collect();
    // Opening the sequence with more tokens: scored from the others, as the
    // paper's shifted labels do, without a word.
    assert!(warnings[0].is_empty(), "{warnings:?}");
    assert_eq!(warnings[1].len(), 1, "{warnings:?}");
    assert!(
        warnings[1][0].contains("action 0 is the sequence's first token alone")
            && warnings[1][0].contains("no value"),
        "{warnings:?}"
    );
    assert!(warnings[2].is_empty(), "{warnings:?}");
}

#[test]
fn damaged_documents_link_loops_and_inexact_ids_are_errors_naming_their_place() {
    let dir = tempfile::tempdir().unwrap();
    // τ² results on one line with more text after them: a damaged document,
    // not JSON lines.
    let tau2: Value =
        serde_json::from_str(&std::fs::read_to_string(sample("tau2_results.json")).unwrap())
            .unwrap();
    let damaged = dir.path().join("tau2.json");
    std::fs::write(&damaged, format!("{tau2}\n{{\"id\": \"x\"}}\n")).unwrap();
    let err = read_records(&damaged, None).unwrap_err().to_string();
    assert!(
        err.contains("tau2.json") && err.contains("trailing characters"),
        "{err}"
    );

    // A Who&When folder with a link back to itself.
    let ww = dir.path().join("ww/Hand-Crafted");
    std::fs::create_dir_all(&ww).unwrap();
    std::fs::copy(
        sample("who_and_when/Hand-Crafted/1.json"),
        ww.join("1.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.path().join("ww"), ww.join("again")).unwrap();
    let err = read_records(&dir.path().join("ww"), None)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("again") && err.contains("loops"), "{err}");
    // A second link to the same file is read once.
    std::fs::remove_file(ww.join("again")).unwrap();
    std::os::unix::fs::symlink(ww.join("1.json"), ww.join("2.json")).unwrap();
    assert_eq!(read_ok(&dir.path().join("ww")).len(), 1);

    // Ids JSON numbers cannot keep exactly are refused; 64-bit integers kept.
    let ids = dir.path().join("ids.jsonl");
    let lines = [
        r#"{"id": 123456789012345678901234, "text": "a"}"#,
        r#"{"id": 1e300, "text": "b"}"#,
        r#"{"id": 9007199254740993, "text": "c"}"#,
        r#"{"id": 2.5, "text": "d"}"#,
    ];
    std::fs::write(&ids, lines.join("\n")).unwrap();
    let got: Vec<std::result::Result<String, String>> = read_records(&ids, None)
        .unwrap()
        .into_iter()
        .map(|r| r.map(|r| r.id).map_err(|e| e.to_string()))
        .collect();
    for (i, r) in got[..2].iter().enumerate() {
        let e = r.as_ref().unwrap_err();
        assert!(
            e.contains(&format!("ids.jsonl:{}", i + 1)) && e.contains("give the id as a string"),
            "{e}"
        );
    }
    assert_eq!(got[2], Ok("9007199254740993".to_string()));
    assert_eq!(got[3], Ok("2.5".to_string()));
}
