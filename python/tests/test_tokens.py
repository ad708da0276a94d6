"""`Scorer.score_tokens`: token ids + a response mask, as RL frameworks hold them."""

import numpy as np
import pytest

import padv
from conftest import DEMO, TOY_POLICY, TOY_REFERENCE, read_jsonl


@pytest.fixture(scope="module")
def tokenized():
    """Demo trajectories tokenized by padv itself: ids, action mask, and their scores."""
    scorer = padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu", token_agg="sum", tokens=True)
    return scorer.score(read_jsonl(DEMO)[:12])


def test_token_ids_and_mask_score_as_the_trajectories_do(toy, tokenized):
    ids = [r["token_ids"].tolist() for r in tokenized]
    mask = [r["action_mask"].tolist() for r in tokenized]
    out = toy.score_tokens(ids, mask)
    for k, r in enumerate(tokenized):
        m = r["action_mask"].astype(bool)
        for ours, theirs in [("logp_policy", "logp_policy"), ("logp_reference", "logp_reference"),
                             ("entropy", "entropy_policy")]:
            got = out[ours][k]
            assert got.dtype == np.float32 and got.shape == m.shape
            np.testing.assert_allclose(got[m], r[theirs][m], rtol=0, atol=1e-5)
            assert np.isnan(got[~m]).all()
        steps = [s["advantage"] for s in r["steps"]]
        np.testing.assert_allclose(out["step_advantage"][k], steps, rtol=0, atol=1e-4)
        np.testing.assert_allclose(out["score"][k], r["score"], rtol=0, atol=1e-4)


def test_a_padded_2d_batch_scores_as_its_unpadded_rows(toy, tokenized):
    rows = tokenized[:4]
    width = max(len(r["token_ids"]) for r in rows) + 3
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    attn = np.zeros_like(ids)
    for k, r in enumerate(rows):
        n = len(r["token_ids"])
        left = (width - n) if k % 2 else 0  # left padding on odd rows, right on even
        ids[k, left:left + n] = r["token_ids"]
        mask[k, left:left + n] = r["action_mask"]
        attn[k, left:left + n] = 1
    padded = toy.score_tokens(ids, mask, attention_mask=attn)
    flat = toy.score_tokens([r["token_ids"] for r in rows], [r["action_mask"] for r in rows])
    assert padded["logp_policy"].shape == (len(rows), width)
    for k in range(len(rows)):
        got = padded["logp_policy"][k][attn[k] == 1]
        np.testing.assert_array_equal(got, flat["logp_policy"][k])
        assert np.isnan(padded["logp_policy"][k][attn[k] == 0]).all()
        np.testing.assert_array_equal(padded["step_advantage"][k], flat["step_advantage"][k])


def test_shapes_and_ids_that_do_not_fit_are_errors(toy):
    with pytest.raises(padv.PadvError, match=r"action_mask\[0\]: 2 entries for 3 token ids"):
        toy.score_tokens([[1, 2, 3]], [[0, 1]])
    with pytest.raises(padv.PadvError, match=r"action_mask: 1 rows for 2 rows"):
        toy.score_tokens([[1, 2], [1, 2]], [[0, 1]])
    with pytest.raises(padv.PadvError, match=r"token_ids\[0\]\[1\]: -2 is not a token id"):
        toy.score_tokens([[1, -2]], [[0, 1]])
    with pytest.raises(padv.PadvError, match=r"token_ids\[0\]"):
        toy.score_tokens([[1, 10**9]], [[0, 1]])  # past the vocabulary
    with pytest.raises(padv.PadvError, match=r"token_ids\[0\]"):
        toy.score_tokens([[[1, 2]]], [[[0, 1]]])


def test_a_row_without_response_tokens_has_no_steps(toy):
    out = toy.score_tokens([[3, 4, 5, 6]], [[0, 0, 0, 0]])
    assert out["step_advantage"][0].shape == (0,)
    assert np.isnan(out["score"][0]) and np.isnan(out["logp_policy"][0]).all()


def test_values_that_are_not_ids_or_mask_bits_are_refused_not_cast(toy):
    with pytest.raises(padv.PadvError, match=r"token_ids\[0\]: token ids are integers, not float64"):
        toy.score_tokens(np.array([[1.7, 2.2, 3.0]]), [[0, 1, 1]])
    with pytest.raises(padv.PadvError, match=r"token_ids\[0\]\[1\]: 18446744073709551615 is not"):
        toy.score_tokens(np.array([[1, 2**64 - 1]], dtype=np.uint64), [[0, 1]])
    with pytest.raises(padv.PadvError, match=r"action_mask\[0\]\[1\]: 2 is not 0 or 1"):
        toy.score_tokens([[1, 2, 3]], [[0, 2, 1]])
    with pytest.raises(padv.PadvError, match=r"attention_mask\[0\]\[0\]: -1 is not 0 or 1"):
        toy.score_tokens([[1, 2, 3]], [[0, 1, 1]], attention_mask=[[-1, 1, 1]])
    # Narrower integer types, unsigned ids and float 0/1 masks are exact.
    a = toy.score_tokens(np.array([[5, 6, 7, 8]], dtype=np.uint16), np.array([[0, 0, 1.0, 1.0]]))
    b = toy.score_tokens([[5, 6, 7, 8]], [[False, False, True, True]])
    np.testing.assert_array_equal(a["logp_policy"][0], b["logp_policy"][0])


def test_max_length_leaves_the_cut_positions_unscored(tokenized):
    r = tokenized[0]
    ids, mask = r["token_ids"], r["action_mask"]
    keep = 5 + int(np.argmax(mask[::-1] == 0))  # the last few tokens, an action among them
    cut = padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu", max_length=keep)
    out = cut.score_tokens([ids], [mask])
    got = out["logp_policy"][0]
    assert np.isnan(got[: len(ids) - keep]).all()
    # The kept tokens score as that suffix scored alone.
    alone = cut.score_tokens([ids[-keep:]], [mask[-keep:]])
    np.testing.assert_array_equal(got[len(ids) - keep:], alone["logp_policy"][0])
