"""The MLM objective: what the encoder sees and what it must predict, per packed window."""

from __future__ import annotations

import torch

from pretrain.config import ObjectiveConfig
from pretrain.data.loader import TokenLoader
from pretrain.objectives import build_objective, check_pairing
from pretrain.objectives.base import IGNORE_INDEX


def test_mlm_batches_mask_only_ordinary_tokens_within_documents(shards_dir, tokenizer):
    objective = build_objective(ObjectiveConfig(name="mlm"), tokenizer, 64)
    loader = TokenLoader(shards_dir, 64, 8, seed=0)
    g = torch.Generator().manual_seed(0)
    token_batch = next(loader)
    batch = objective(token_batch, g)
    tokens = token_batch.tokens[:, :-1]
    assert batch.input_ids.shape == batch.labels.shape == tokens.shape
    selected = batch.labels != IGNORE_INDEX
    assert torch.equal(batch.labels[selected], tokens[selected])
    assert not selected[tokens == tokenizer.special.eos].any()
    assert batch.attention.kind == "bidirectional"
    assert torch.equal(batch.attention.document_ids, token_batch.document_ids[:, :-1])
    assert 0.08 < selected.float().mean() < 0.22
    # a new masking at each draw, the same one for the same generator state
    again = objective(token_batch, torch.Generator().manual_seed(0))
    other = objective(token_batch, g)
    assert torch.equal(again.labels, batch.labels) and not torch.equal(other.labels, batch.labels)


def test_whole_word_masking_selects_whole_words(shards_dir, tokenizer):
    cfg = ObjectiveConfig(name="mlm", whole_word_masking=True)
    objective = build_objective(cfg, tokenizer, 128)
    token_batch = next(TokenLoader(shards_dir, 128, 8, seed=1))
    batch = objective(token_batch, torch.Generator().manual_seed(3))
    tokens = token_batch.tokens[:, :-1]
    starts = objective.words.starts(tokens)
    selected = batch.labels != IGNORE_INDEX
    special = torch.isin(tokens, torch.tensor(objective.special_ids))
    # a token that continues a word (and does not follow a special token) shares its fate
    same_word = ~starts[:, 1:] & ~special[:, :-1] & ~special[:, 1:]
    assert same_word.any() and selected.any()
    assert torch.equal(selected[:, 1:][same_word], selected[:, :-1][same_word])
    # " the" starts a word, "ing" continues one
    vocab = tokenizer.backend.get_vocab()
    assert objective.words.opens[vocab["Ġthe"]] and not objective.words.opens[vocab["ing"]]


def test_mlm_on_a_decoder_is_refused_with_what_would_work():
    import pytest

    works = r"does not train model.family 'decoder'.*\['clm', 'prefix_lm', 'ul2'\]"
    with pytest.raises(ValueError, match=works):
        check_pairing("mlm", "decoder")


def test_config_settings_reach_the_masking(tokenizer):
    """Through ``build_objective``: specials are never selected nor drawn as replacements,
    80/10/10, BERT's exact count (capped by ``mlm_max_predictions``), positions per document."""
    from pretrain.data.loader import TokenBatch
    from pretrain.objectives.clm import positions_within_documents

    g = torch.Generator().manual_seed(0)
    B, T = 16, 64
    mask_id = tokenizer.special.mask
    for cap, per_row in ((None, 5), (3, 3)):  # 15% of the 32 ordinary tokens a row: 5
        cfg = ObjectiveConfig(name="mlm", exact_count=True, mlm_max_predictions=cap)
        objective = build_objective(cfg, tokenizer, T)
        special = torch.tensor(objective.special_ids)
        tokens = torch.randint(len(special) + 10, tokenizer.vocab_size, (B, T + 1), generator=g)
        tokens[:, ::2] = special[torch.randint(0, len(special), (B, T // 2 + 1), generator=g)]
        docs = (torch.arange(T + 1) >= 40).long().expand(B, -1)  # two documents a row
        token_batch = TokenBatch(tokens, docs, torch.zeros(B, dtype=torch.long), torch.arange(B))
        masked = kept = total = 0
        for _ in range(50):
            batch = objective(token_batch, g)
            selected = batch.labels != IGNORE_INDEX
            assert (selected.sum(1) == per_row).all()
            assert not torch.isin(batch.labels[selected], special).any()
            replaced = batch.input_ids[selected]
            assert not torch.isin(replaced[replaced != mask_id], special).any()
            masked += int((replaced == mask_id).sum())
            kept += int((replaced == batch.labels[selected]).sum())
            total += int(selected.sum())
        assert abs(masked / total - 0.8) < 0.04 and abs(kept / total - 0.1) < 0.03
        assert torch.equal(batch.position_ids, positions_within_documents(docs[:, :-1]))
