//! Ranking metrics for trajectory scores, matching what the paper computes
//! with scikit-learn and SciPy: AUROC as the Mann–Whitney statistic (a tied
//! positive/negative pair counts half, as `roc_auc_score`), Spearman ρ as the
//! Pearson correlation of average ranks (as `scipy.stats.spearmanr`), and the
//! ROC curve with tied scores joined by one diagonal segment.
//!
//! Undefined values (one class only, a constant input) are NaN.

/// 1-based ranks; tied values share the average of the ranks they span.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && values[order[j]] == values[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold ranks i+1..=j; their mean is (i+1+j)/2.
        let rank = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = rank;
        }
        i = j;
    }
    ranks
}

/// Area under the ROC curve of `scores` predicting `labels` (true = positive).
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let ranks = average_ranks(scores);
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    u / (n_pos as f64 * n_neg as f64)
}

/// Spearman rank correlation of `x` and `y`.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "x and y differ in length");
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Pearson correlation; NaN when either input is constant or shorter than 2.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// ROC curve points `(false positive rate, true positive rate)` from (0,0) to
/// (1,1), one point per distinct score, highest score first. Empty when a
/// class is missing.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if labels[order[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        points.push((fp as f64 / n_neg as f64, tp as f64 / n_pos as f64));
        i = j;
    }
    points
}

/// Mean of `values`; NaN when empty.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auroc_counts_a_tied_pair_as_half() {
        // Pairs (pos, neg): (2,1) win, (2,2) tie, (3,1) win, (3,2) win → 3.5/4.
        let a = auroc(&[1.0, 2.0, 2.0, 3.0], &[false, false, true, true]);
        assert!(close(a, 0.875), "{a}");
    }

    #[test]
    fn auroc_is_one_for_perfect_and_zero_for_reversed_ranking() {
        assert_eq!(auroc(&[0.1, 0.9], &[false, true]), 1.0);
        assert_eq!(auroc(&[0.9, 0.1], &[false, true]), 0.0);
        assert_eq!(auroc(&[5.0, 5.0, 5.0], &[false, true, true]), 0.5);
    }

    #[test]
    fn auroc_with_one_class_is_undefined() {
        assert!(auroc(&[1.0, 2.0], &[true, true]).is_nan());
    }

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 30.0, 20.0, 20.0]),
            vec![1.5, 4.0, 1.5, 6.0, 4.0, 4.0]
        );
    }

    #[test]
    fn spearman_with_ties_matches_a_hand_computation() {
        // x ranks [1.5, 1.5, 3, 4]; y ranks [1, 2.5, 2.5, 4].
        // Centred: x [-1, -1, 0.5, 1.5], y [-1.5, 0, 0, 1.5]:
        // Σxy = 1.5 + 2.25 = 3.75, Σx² = 4.5, Σy² = 4.5 → ρ = 3.75/4.5.
        let r = spearman(&[1.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 1.0, 5.0]);
        assert!(close(r, 3.75 / 4.5), "{r}");
        assert!(close(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0));
        assert!(spearman(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]).is_nan());
    }

    #[test]
    fn roc_curve_joins_tied_scores_in_one_segment() {
        let c = roc_curve(&[1.0, 2.0, 2.0, 3.0], &[false, false, true, true]);
        assert_eq!(c, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        // Trapezoid area under these points equals the AUROC.
        let area: f64 = c
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!(close(area, 0.875));
    }
}
