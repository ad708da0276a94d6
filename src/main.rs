//! The `padv` binary: parse the command line and hand over to the library.

mod cli;
mod commands;
mod score_run;
mod summary;
mod table;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
