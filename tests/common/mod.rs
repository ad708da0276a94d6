//! Helpers shared by the integration tests that drive the library directly.
#![allow(dead_code)] // each test file uses a subset

use std::path::Path;

use padv::trajectory::{Record, read_records};

/// Every record of `path` (any input format), each required to read.
pub fn read_all(path: &Path) -> Vec<Record> {
    read_records(path, None)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}
