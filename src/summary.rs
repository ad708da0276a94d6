//! The closing summary of `padv score`: what was scored, how fast, what went
//! wrong, and what the prefix cache saved (only when records shared a
//! prefix). Printed after the tables, or to stderr when `--output` is used,
//! so a long run to a file tells the user what happened.

use std::fmt;
use std::time::Duration;

use padv::kv::CacheStats;

/// Counters of one `padv score` run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Output lines written (scored and error records).
    pub records: usize,
    pub steps: usize,
    /// Tokens of the scored records.
    pub tokens: usize,
    pub errors: usize,
    pub warnings: usize,
    pub elapsed: Duration,
    pub cache: Option<CacheStats>,
    /// The run stopped at an error (`--on-error fail`).
    pub stopped: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "summary: {} records, {} steps, {} tokens in {secs:.2} s ({:.0} tokens/s); {} errors, {} warnings",
            self.records,
            self.steps,
            self.tokens,
            self.tokens as f64 / secs.max(1e-9),
            self.errors,
            self.warnings
        )?;
        if self.warnings > 0 {
            write!(
                f,
                "\nwarnings: each is printed above and kept in its record's `warnings`; \
                 --strict makes a record whose render lost something an error"
            )?;
        }
        if self.stopped {
            write!(f, "; stopped at the first error (--on-error fail)")?;
        }
        if let Some(c) = self.cache.as_ref().filter(|c| c.hit_tokens > 0) {
            write!(
                f,
                "\nprefix cache: {:.1}% of tokens reused ({} reused, {} computed, {} evictions)",
                100.0 * c.hit_rate(),
                c.hit_tokens,
                c.computed_tokens,
                c.evictions
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_line_appears_only_when_records_shared_a_prefix() {
        let mut s = Summary {
            records: 3,
            steps: 7,
            tokens: 200,
            errors: 1,
            elapsed: Duration::from_secs(2),
            cache: Some(CacheStats::default()),
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "summary: 3 records, 7 steps, 200 tokens in 2.00 s (100 tokens/s); 1 errors, 0 warnings"
        );
        s.cache = Some(CacheStats {
            hit_tokens: 50,
            computed_tokens: 150,
            ..CacheStats::default()
        });
        assert!(s.to_string().ends_with(
            "\nprefix cache: 25.0% of tokens reused (50 reused, 150 computed, 0 evictions)"
        ));
    }
}
