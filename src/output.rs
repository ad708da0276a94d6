//! The commands' output files: opened only once the input has been read,
//! never one of the inputs themselves, and every write error names the file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// JSON lines going to a file, or to stdout (`None` or `-`).
pub struct Output {
    w: Box<dyn Write>,
    path: Option<PathBuf>,
}

impl Output {
    /// Creates (truncates) `path`, refusing one that is any of `inputs`
    /// (the same file, through a link or not): writing it would destroy the
    /// records it is about to hold.
    pub fn create(path: Option<&Path>, inputs: &[&Path]) -> Result<Output> {
        let path = path.filter(|p| p.as_os_str() != "-");
        let Some(p) = path else {
            return Ok(Output {
                w: Box::new(BufWriter::new(io::stdout().lock())),
                path: None,
            });
        };
        refuse_input(p, inputs)?;
        let file = File::create(p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Output {
            w: Box::new(BufWriter::new(file)),
            path: Some(p.to_path_buf()),
        })
    }

    /// The file written, `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn named(&self, e: io::Error) -> io::Error {
        match &self.path {
            Some(p) => io::Error::new(e.kind(), format!("writing {}: {e}", p.display())),
            None => e,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf).map_err(|e| self.named(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush().map_err(|e| self.named(e))
    }
}

/// Refuses an `--output` that is the input before any work is done (stdout,
/// `None` or `-`, is never one).
pub fn refuse_output(output: Option<&Path>, input: &Path) -> Result<()> {
    output.map_or(Ok(()), |o| refuse_input(o, &[input]))
}

/// An error when `path` is one of `inputs` (the same file, through a link
/// or not).
pub fn refuse_input(path: &Path, inputs: &[&Path]) -> Result<()> {
    refuse_input_as("--output", path, inputs)
}

/// [`refuse_input`] for the file option `flag` (`--json`, `--report`).
pub fn refuse_input_as(flag: &str, path: &Path, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if same_file::is_same_file(path, input).unwrap_or(false) {
            bail!(
                "{flag} {} is the input file {}: writing it would destroy the records being \
                 read; choose another path",
                path.display(),
                input.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_refused_as_output_through_a_link_too_and_left_whole() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"text\": \"a\"}\n").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        for out in [&input, &link] {
            let err = Output::create(Some(out), &[&input]).err().unwrap();
            assert!(err.to_string().contains("is the input"), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(&input).unwrap(),
            "{\"text\": \"a\"}\n"
        );
        let other = dir.path().join("out.jsonl");
        let mut w = Output::create(Some(&other), &[&input]).unwrap();
        writeln!(w, "x").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "x\n");
    }

    #[test]
    fn write_errors_name_the_file() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mut w = Output::create(Some(full), &[]).unwrap();
        let e = writeln!(w, "x")
            .and_then(|_| w.flush())
            .expect_err("/dev/full refuses writes");
        assert!(e.to_string().starts_with("writing /dev/full: "), "{e}");
    }
}
