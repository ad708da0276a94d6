//! A minimal program embedding padv as a library: load a policy/reference
//! pair (the bundled toyworld pair by default), score a whole trajectory,
//! then follow an agent online with a [`Session`]: score each step as it
//! happens and pick the best of several candidate actions.
//!
//! ```text
//! cargo run --release --example embed                      # toyworld pair
//! cargo run --release --example embed -- POLICY_DIR REFERENCE_DIR
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use padv::score::aggregate::TokenAgg;
use padv::trajectory::record_from_json;
use padv::{Scorer, ScorerOptions, Session};
use serde_json::json;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld/models");
    let (policy, reference) = match args.as_slice() {
        [p, r] => (p.clone(), r.clone()),
        [] => (toy.join("trained"), toy.join("ref")),
        _ => anyhow::bail!("usage: embed [POLICY_DIR REFERENCE_DIR]"),
    };
    let opts = ScorerOptions {
        token_agg: TokenAgg::Sum,
        ..ScorerOptions::default()
    };
    let mut scorer = Scorer::load(&policy, &reference, opts)
        .with_context(|| format!("loading {} and {}", policy.display(), reference.display()))?;
    println!("{}", scorer.backend_description());

    // 1. A whole trajectory, as `padv score` scores a record.
    let system =
        json!({"role": "system", "content": "get the key , then open the door . avoid pits ."});
    let observation = json!({"role": "user", "content": "start . at 1 0 . left 12 . key 1 north . door 1 south . danger none ."});
    let record = record_from_json(
        json!({"id": "example", "messages": [system, observation, {"role": "assistant", "content": "go north"}]}),
        "example",
    )?;
    for scored in scorer.score(&[record]) {
        let scored = scored?;
        println!(
            "{}: trajectory score {:?} over {} step(s)",
            scored.record.id,
            scored.score,
            scored.steps.len()
        );
        println!("{}", scorer.to_json(&scored));
    }

    // 2. Online: one step at a time, then a choice among candidates.
    let mut session = Session::new(vec![system]);
    let steps = scorer.append(
        &mut session,
        vec![
            observation,
            json!({"role": "assistant", "content": "go north"}),
        ],
    )?;
    println!("step 0 `go north`: advantage {:?}", steps[0].advantage);

    let candidates = ["take key", "go south", "wait"];
    let scores = scorer.candidates(
        &session,
        Some(json!({"role": "user", "content": "at 1 1 . left 11 . key here . door 2 south . danger none ."})),
        candidates
            .iter()
            .map(|c| json!({"role": "assistant", "content": c}))
            .collect(),
    )?;
    let best = scores
        .iter()
        .zip(candidates)
        .filter_map(|(s, c)| Some((s.advantage?, c)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    for (s, c) in scores.iter().zip(candidates) {
        println!("candidate `{c}`: advantage {:?}", s.advantage);
    }
    if let Some((adv, c)) = best {
        println!("best next action: `{c}` ({adv:+.3})");
    }
    Ok(())
}
