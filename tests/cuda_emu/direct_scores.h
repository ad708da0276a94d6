// direct_scores.h — the four scores of one row of logits computed directly
// in f64 (exact softmax statistics, top-k by sorting): what the emulator
// drivers of the scoring kernels (fold_driver.cpp, fused_driver.cpp) hold
// the kernels to.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

struct Want {
    double logp, entropy, top_mean;
};

// Log-prob of `target`, the entropy and the mean of the TOP_K largest
// log-probs (of all of them when the row is shorter).
inline Want direct(const std::vector<double>& z, int target) {
    const double m = *std::max_element(z.begin(), z.end());
    double s = 0, ez = 0;
    for (double v : z) {
        s += std::exp(v - m);
        ez += std::exp(v - m) * v;
    }
    const double lse = m + std::log(s);
    std::vector<double> top(z);
    const int k = std::min<int>(TOP_K, (int)z.size());
    std::partial_sort(top.begin(), top.begin() + k, top.end(), std::greater<double>());
    double ts = 0;
    for (int i = 0; i < k; ++i) ts += top[i];
    return Want{z[target] - lse, lse - ez / s, ts / k - lse};
}
