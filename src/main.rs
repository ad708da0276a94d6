//! The `padv` binary: parse the command line and hand over to the library.

mod cli;
mod commands;
mod output;
mod score_run;
mod summary;
mod table;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {}", report(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each said once: a library error whose message
/// already ends with its source (`path: No such file … (os error 2)`) is not
/// followed by that source again.
fn report(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}
