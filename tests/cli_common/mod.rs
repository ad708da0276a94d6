//! Running the `padv` binary from integration tests.
#![allow(dead_code)] // each test file uses a subset

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};

/// `--policy DIR/trained --reference DIR/ref`: a pair laid out as the
/// fixtures and the toyworld bundle lay theirs out.
pub fn pair_args(dir: &Path) -> [OsString; 4] {
    [
        "--policy".into(),
        dir.join("trained").into(),
        "--reference".into(),
        dir.join("ref").into(),
    ]
}

pub fn padv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_padv"))
}

/// Run `cmd` and require success; a failure shows the command's stderr.
pub fn succeed(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
