"""Permutation LM (XLNet): targets, factorization order and the perm-mask rule
(reference/objectives.md §6 and §9.6)."""

from __future__ import annotations

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives import OBJECTIVES, check_pairing
from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.plm import (
    PermutationLM,
    hf_order,
    permutation_mask,
    span_targets_xlnet,
    xlnet_order,
)

SPECIAL = [0, 1, 2]  # e.g. EOS, SEP, CLS
MASK_ID = 3


def token_batch(B: int, T: int, seed: int = 0, specials_every: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 500, (B, T + 1), generator=g)
    if specials_every:
        tokens[:, ::specials_every] = 0
    zeros = torch.zeros_like(tokens)
    return TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))


def draw(rule="xlnet", B=4, T=64, seed=0, specials_every=0):
    obj = PermutationLM(SPECIAL, mask_id=MASK_ID, rule=rule)
    tb = token_batch(B, T, seed, specials_every)
    return obj, tb, obj(tb, torch.Generator().manual_seed(seed))


def order_from_mask(perm: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank of each target among the targets, read back from who sees whom."""
    sees = ~perm[target][:, target]  # (n, n): target i sees target j
    return sees.sum(1)  # a target sees exactly the targets before it


@pytest.mark.parametrize("seed", range(20))
def test_xlnet_perm_mask_rule_holds_for_random_orders(seed):
    T = 48
    g = torch.Generator().manual_seed(seed)
    special = torch.rand(T, generator=g) < 0.1
    target = span_targets_xlnet(T, T // 6, ~special, g)
    order = xlnet_order(T, g)
    perm = permutation_mask(order, target, special)  # True: i may NOT see j
    context = ~target & ~special
    diag = perm.diagonal()
    assert diag[target].all() and not diag[~target].any()  # §9.6: targets never see themselves
    assert perm[context][:, target].all()  # context rows never see a target column
    assert perm[context][:, special].all()  # ... nor a special token (they have an order)
    assert not perm[:, context].any()  # everyone sees every context token
    # targets and specials: i sees j (j != i) iff order[j] < order[i]
    ordered = torch.nonzero(~context).squeeze(1)
    for i in ordered.tolist():
        for j in ordered.tolist():
            if i == j:
                continue
            assert bool(~perm[i, j]) == bool(order[j] < order[i]), (i, j)
    # specials see themselves, are never targets
    assert not (target & special).any()
    assert not perm.diagonal()[special].any()


@pytest.mark.parametrize("seed", range(10))
def test_hf_perm_mask_rule_and_order_keep_the_halves_apart(seed):
    T = 32
    g = torch.Generator().manual_seed(seed)
    order = hf_order(T, g)
    assert sorted(order.tolist()) == list(range(T))
    assert order[: T // 2].max() < order[T // 2 :].min()  # first half first
    assert torch.equal(order[T // 2 :] - T // 2, order[: T // 2])  # same permutation of pairs
    special = torch.zeros(T, dtype=torch.bool)
    special[0] = True
    target = torch.rand(T, generator=g) < 0.3
    target &= ~special
    perm = permutation_mask(order, target, special, rule="hf")
    context = ~target & ~special
    rev = torch.where(context, -1, order)
    expected = (rev[:, None] <= rev[None, :]) & target[None, :]
    assert torch.equal(perm, expected)
    assert not perm[:, special].any()  # HF: special tokens are visible to all


def test_partial_prediction_predicts_the_last_sixth_of_the_order_in_spans():
    obj, tb, mb = draw(B=16, T=120, seed=3)
    targets = mb.labels != IGNORE_INDEX
    assert (targets.sum(1) == 120 // 6).all()  # exactly num_predict = T // K
    tokens = tb.tokens[:, :-1]
    assert torch.equal(mb.labels[targets], tokens[targets])  # predicts the token itself
    assert torch.equal(mb.input_ids, tokens)  # the content stream keeps real tokens
    # the targets are the last of the order: each sees every context token, no context token
    # sees a target
    perm = ~mb.attention.permutation_allowed()
    for b in range(16):
        t = targets[b]
        assert perm[b][~t][:, t].all()
        assert not perm[b][:, ~t].any()
    # span-based: runs of consecutive targets, longer than single tokens on average
    runs = (targets[:, 1:] & ~targets[:, :-1]).sum() + targets[:, 0].sum()
    assert targets.sum() / runs > 1.5
    # target_mapping: one one-hot row per target, in position order
    tm = mb.target_mapping
    assert tm.shape == (16, 20, 120)
    assert torch.equal(tm.sum(1).bool(), targets)
    assert (tm.sum(2) == 1).all()


def test_the_batch_carries_ranks_not_a_t_by_t_mask():
    _, _, mb = draw(B=3, T=64, seed=2, specials_every=9)
    spec = mb.attention
    assert spec.permutation_mask is None
    assert spec.query_rank.shape == spec.key_rank.shape == (3, 64)
    allowed = spec.permutation_allowed()  # (B, T, T): True where i may see j
    assert allowed.shape == (3, 64, 64)
    targets = mb.labels != IGNORE_INDEX
    special = mb.input_ids == 0
    assert special.any() and targets.any()
    context = ~targets & ~special
    for b in range(3):
        a = allowed[b]
        assert torch.equal(a.diagonal(), ~targets[b])  # only targets never see themselves
        assert a[:, context[b]].all()  # every row sees every context column
        assert not a[context[b]][:, ~context[b]].any()  # context sees no target nor special
        # specials keep their rank: targets and specials see each other in one strict order
        ranked = torch.nonzero(~context[b]).squeeze(1)
        sees = a[ranked][:, ranked] & ~torch.eye(len(ranked), dtype=torch.bool)
        assert sorted(sees.sum(1).tolist()) == list(range(len(ranked)))
        assert not (sees & sees.T).any()
        assert a[special[b]][:, targets[b]].any() and a[targets[b]][:, special[b]].any()


def test_special_tokens_are_never_targets_and_keep_their_rank():
    _, tb, mb = draw(B=8, T=64, seed=1, specials_every=7)
    special = tb.tokens[:, :-1] == 0
    assert special.any()
    assert not (mb.labels[special] != IGNORE_INDEX).any()
    assert ((mb.labels != IGNORE_INDEX).sum(1) == 64 // 6).all()


def test_draws_are_seeded_new_per_sample_and_pure():
    obj = PermutationLM(SPECIAL)
    tb = token_batch(2, 64)
    same = token_batch(2, 64)
    same.tokens[1] = same.tokens[0]
    a = obj(same, torch.Generator().manual_seed(5))
    assert not torch.equal(a.labels[0] != -100, a.labels[1] != -100)  # new draw per sample
    a_allowed = a.attention.permutation_allowed()
    assert not torch.equal(a_allowed[0], a_allowed[1])
    x = obj(tb, torch.Generator().manual_seed(7))
    y = obj(tb, torch.Generator().manual_seed(7))
    z = obj(tb, torch.Generator().manual_seed(8))
    assert torch.equal(x.attention.permutation_allowed(), y.attention.permutation_allowed())
    assert torch.equal(x.labels, y.labels) and torch.equal(x.target_mapping, y.target_mapping)
    assert not torch.equal(x.attention.permutation_allowed(), z.attention.permutation_allowed())
    with pytest.raises(ValueError, match="Generator"):
        obj(tb)


def test_hf_rule_masks_inputs_uses_identity_mapping_and_about_a_sixth():
    _, tb, mb = draw(rule="hf", B=64, T=60, seed=2)
    targets = mb.labels != IGNORE_INDEX
    assert torch.equal(mb.input_ids[targets], torch.full((int(targets.sum()),), MASK_ID))
    assert torch.equal(mb.input_ids[~targets], tb.tokens[:, :-1][~targets])
    assert torch.equal(mb.target_mapping[0], torch.eye(60))
    share = targets.float().mean().item()
    assert 0.10 < share < 0.22, share
    with pytest.raises(ValueError, match="even"):
        PermutationLM(SPECIAL, MASK_ID, rule="hf")(token_batch(1, 61), torch.Generator())


def test_plm_pairs_with_xlnet_only():
    assert OBJECTIVES["plm"].families == ("xlnet",)
    check_pairing("plm", "xlnet")
    with pytest.raises(ValueError, match="xlnet"):
        check_pairing("plm", "decoder")
    with pytest.raises(ValueError, match="plm"):
        check_pairing("mlm", "xlnet")


def test_plm_settings_come_from_the_config_and_bad_values_name_the_key(tokenizer):
    from pretrain.config import ConfigError, ObjectiveConfig
    from pretrain.objectives import build_objective

    cfg = ObjectiveConfig(name="plm", plm_rule="hf", plm_partial_k=4.0, plm_max_span=3)
    objective = build_objective(cfg, tokenizer, 64, family="xlnet")
    assert (objective.rule, objective.partial_k, objective.max_span) == ("hf", 4.0, 3)
    with pytest.raises(ConfigError, match="objective.plm_partial_k"):
        ObjectiveConfig(name="plm", plm_partial_k=1.0).validate()


def reference_span_targets(length, num_predict, eligible, generator, partial_k, max_span):
    """XLNet's ``_sample_mask`` walk written plainly on tensors: the specification the fast
    walk of :func:`span_targets_xlnet` (Python numbers) must reproduce draw for draw."""
    target = torch.zeros(length, dtype=torch.bool)
    u_len, u_ctx = torch.rand(2, length + 1, generator=generator, dtype=torch.float64)
    p = 1.0 / torch.arange(1, max_span + 1, dtype=torch.float64)
    cdf = (p / p.sum()).cumsum(0)
    count, cur, k = 0, 0, 0
    while cur < length and count < num_predict and k <= length:
        n = min(int(torch.searchsorted(cdf, u_len[k], right=True)) + 1, max_span)
        n = min(n, num_predict - count)
        ctx = int(n * partial_k)
        left = min(int(u_ctx[k] * ctx), ctx - 1)
        k += 1
        beg, end = cur + left, cur + left + n
        if end >= length:
            break
        count += int((eligible[beg:end] & ~target[beg:end]).sum())
        target[beg:end] |= eligible[beg:end]
        cur = end + (ctx - left)
    need = min(num_predict, int(eligible.sum())) - count
    if need > 0:
        free = torch.nonzero(eligible & ~target).squeeze(1)
        target[free[torch.randperm(len(free), generator=generator)[:need]]] = True
    return target


def test_span_walk_draws_exactly_what_the_plain_tensor_walk_draws():
    """Same targets and the same generator state after, over lengths, eligibility, K, span
    limits and target counts (top-ups included)."""
    g = torch.Generator().manual_seed(1)
    for trial in range(300):
        T = int(torch.randint(8, 600, (1,), generator=g))
        eligible = torch.rand(T, generator=g) > float(torch.rand((), generator=g)) * 0.5
        k = [6.0, 4.0, 2.5, 7.3][trial % 4]
        n = max(1, int(T // k)) if trial % 3 else int(torch.randint(1, T + 1, (1,), generator=g))
        span = [5, 3, 1][trial % 3]
        state = g.get_state()
        want = reference_span_targets(T, n, eligible, g, k, span)
        after = g.get_state()
        g.set_state(state)
        got = span_targets_xlnet(T, n, eligible, g, k, span)
        assert torch.equal(got, want), trial
        assert torch.equal(g.get_state(), after), trial
    empty = span_targets_xlnet(0, 1, torch.zeros(0, dtype=torch.bool), g)
    assert empty.shape == (0,) and empty.dtype == torch.bool


def test_factorization_orders_are_uniform_permutations_shared_by_blocks():
    """Every position is equally likely first; with ``perm_size`` each block of that many
    positions takes the same permutation (XLNet's ``_local_perm``)."""
    g = torch.Generator().manual_seed(0)
    first = torch.zeros(8)
    for _ in range(800):
        order = xlnet_order(8, g)
        assert sorted(order.tolist()) == list(range(8))
        first[order[0]] += 1
    assert first.min() > 60 and first.max() < 140, first  # 100 each, binomial sd ~9.4
    blocked = xlnet_order(8, g, perm_size=4)
    assert sorted(blocked[:4].tolist()) == [0, 1, 2, 3]
    assert torch.equal(blocked[4:], blocked[:4] + 4)


def test_the_configured_partial_k_and_perm_size_drive_the_draw():
    """Row by row, the objective draws what span_targets_xlnet and xlnet_order draw with its
    own partial_k and perm_size, in that order, from the one generator."""
    B, T = 4, 64
    obj = PermutationLM(SPECIAL, partial_k=4.0, max_span=3, perm_size=16)
    tb = token_batch(B, T, seed=5, specials_every=9)
    batch = obj(tb, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    tokens = tb.tokens[:, :-1]
    for b in range(B):
        eligible = ~torch.isin(tokens[b], torch.tensor(SPECIAL))
        want = span_targets_xlnet(T, obj.num_predict(T), eligible, g, 4.0, 3)
        xlnet_order(T, g, 16)
        assert torch.equal(batch.labels[b] != IGNORE_INDEX, want), b
    assert obj.num_predict(T) == round(T / 4.0)  # partial prediction: 1/K of the window


def test_target_mapping_keeps_its_width_when_rows_have_few_eligible_tokens():
    # Rows of 5 and 7 non-special tokens, fewer than T // K = 10 targets: every one is
    # predicted, and the mapping keeps M = 10 rows (the shape stays the same batch after
    # batch), its first rows one-hot at the targets in position order, the rest zero.
    obj = PermutationLM(SPECIAL, mask_id=MASK_ID)
    tb = token_batch(B=2, T=64, seed=4)
    eligible = [torch.tensor([3, 17, 18, 40, 63]), torch.tensor([0, 1, 2, 30, 31, 32, 50])]
    tb.tokens[:, :64] = 0
    for row, pos in enumerate(eligible):
        tb.tokens[row, pos] = torch.arange(11, 11 + len(pos))
    mb = obj(tb, torch.Generator().manual_seed(4))
    assert mb.target_mapping.shape == (2, 64 // 6, 64)
    for row, pos in enumerate(eligible):
        n = len(pos)
        mapping = mb.target_mapping[row]
        assert torch.equal(torch.nonzero(mb.labels[row] != IGNORE_INDEX).squeeze(1), pos)
        assert torch.equal(mapping[:n].argmax(1), pos)
        assert torch.equal(mapping[:n].sum(1), torch.ones(n))
        assert not mapping[n:].any()
