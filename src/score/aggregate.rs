//! Token → step → trajectory aggregation, as the paper defines it.
//!
//! A step's progress advantage is `β · (agg(logp_policy[span]) − agg(logp_reference[span]))`:
//! the aggregation is applied to each model separately, then subtracted.
//! (For `sum` and `mean` that equals aggregating the per-token difference; for
//! `min`/`max`/`last` it does not, and we follow the paper.)

use std::fmt;
use std::str::FromStr;

/// How the tokens of one action are reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAgg {
    Mean,
    Sum,
    Last,
    Min,
    Max,
}

/// How the step scores of one trajectory are reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepAgg {
    Mean,
    Sum,
    Last,
    Min,
    Max,
    /// Mean of the lowest ⌈10%⌉ step scores (at least one).
    Bottom10,
}

impl TokenAgg {
    pub const ALL: [TokenAgg; 5] = [
        TokenAgg::Mean,
        TokenAgg::Sum,
        TokenAgg::Last,
        TokenAgg::Min,
        TokenAgg::Max,
    ];
    pub fn name(self) -> &'static str {
        match self {
            TokenAgg::Mean => "mean",
            TokenAgg::Sum => "sum",
            TokenAgg::Last => "last",
            TokenAgg::Min => "min",
            TokenAgg::Max => "max",
        }
    }
    /// Reduce `values`; `None` when there are none or any is NaN (an
    /// unscored position): a step is aggregated from all its tokens or not
    /// at all.
    pub fn apply(self, values: &[f32]) -> Option<f64> {
        if values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut it = values.iter().map(|&v| v as f64);
        match self {
            TokenAgg::Sum => {
                let mut n = 0usize;
                let s = it.inspect(|_| n += 1).sum::<f64>();
                (n > 0).then_some(s)
            }
            TokenAgg::Mean => {
                let (mut s, mut n) = (0.0, 0usize);
                for v in it {
                    s += v;
                    n += 1;
                }
                (n > 0).then(|| s / n as f64)
            }
            TokenAgg::Last => it.next_back(),
            TokenAgg::Min => it.reduce(f64::min),
            TokenAgg::Max => it.reduce(f64::max),
        }
    }
}

impl StepAgg {
    pub const ALL: [StepAgg; 6] = [
        StepAgg::Mean,
        StepAgg::Sum,
        StepAgg::Last,
        StepAgg::Min,
        StepAgg::Max,
        StepAgg::Bottom10,
    ];
    pub fn name(self) -> &'static str {
        match self {
            StepAgg::Mean => "mean",
            StepAgg::Sum => "sum",
            StepAgg::Last => "last",
            StepAgg::Min => "min",
            StepAgg::Max => "max",
            StepAgg::Bottom10 => "bottom10",
        }
    }
    /// Reduce step scores; `None` for an empty slice.
    pub fn apply(self, steps: &[f64]) -> Option<f64> {
        if steps.is_empty() {
            return None;
        }
        let n = steps.len() as f64;
        Some(match self {
            StepAgg::Mean => steps.iter().sum::<f64>() / n,
            StepAgg::Sum => steps.iter().sum(),
            StepAgg::Last => steps[steps.len() - 1],
            StepAgg::Min => steps.iter().copied().fold(f64::INFINITY, f64::min),
            StepAgg::Max => steps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            StepAgg::Bottom10 => {
                let k = ((steps.len() as f64) * 0.1).ceil().max(1.0) as usize;
                let mut sorted = steps.to_vec();
                sorted.sort_by(|a, b| a.total_cmp(b));
                sorted[..k].iter().sum::<f64>() / k as f64
            }
        })
    }
}

macro_rules! name_parsing {
    ($t:ty) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$t>::ALL
                    .into_iter()
                    .find(|a| a.name() == s)
                    .ok_or_else(|| {
                        let names: Vec<_> = <$t>::ALL.iter().map(|a| a.name()).collect();
                        format!(
                            "unknown aggregation `{s}`; expected one of {}",
                            names.join("|")
                        )
                    })
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
name_parsing!(TokenAgg);
name_parsing!(StepAgg);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_aggregations_use_every_position_or_give_nothing() {
        let v = [1.0, -2.0, 4.0, 0.5];
        assert_eq!(TokenAgg::Sum.apply(&v), Some(3.5));
        assert_eq!(TokenAgg::Mean.apply(&v), Some(0.875));
        assert_eq!(TokenAgg::Last.apply(&v), Some(0.5));
        assert_eq!(TokenAgg::Min.apply(&v), Some(-2.0));
        assert_eq!(TokenAgg::Max.apply(&v), Some(4.0));
        // An unscored position anywhere in the span: no value, whatever the
        // aggregation (a step is never scored from part of its tokens).
        for agg in TokenAgg::ALL {
            for at in 0..v.len() {
                let mut w = v;
                w[at] = f32::NAN;
                assert_eq!(agg.apply(&w), None, "{agg} with NaN at {at}");
            }
            assert_eq!(agg.apply(&[]), None);
        }
    }

    #[test]
    fn bottom10_takes_the_ceiling_of_ten_percent_and_at_least_one() {
        // 11 steps → ⌈1.1⌉ = 2 lowest: -5 and -3.
        let mut s: Vec<f64> = (0..9).map(|i| i as f64).collect();
        s.push(-5.0);
        s.push(-3.0);
        assert_eq!(StepAgg::Bottom10.apply(&s), Some(-4.0));
        assert_eq!(StepAgg::Bottom10.apply(&[2.0, 7.0]), Some(2.0));
        assert_eq!(StepAgg::Bottom10.apply(&[]), None);
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for a in TokenAgg::ALL {
            assert_eq!(a.name().parse::<TokenAgg>().unwrap(), a);
        }
        let err = "median".parse::<StepAgg>().unwrap_err();
        assert!(err.contains("bottom10"), "{err}");
    }
}
