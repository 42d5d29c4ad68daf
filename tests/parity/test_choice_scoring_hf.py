"""Answer log-likelihoods, batched and padded, against Hugging Face models scoring each
request alone (lm-evaluation-harness's ``loglikelihood``)."""

from __future__ import annotations

import pytest
import torch

from pretrain.eval.choice_scoring import decoder_log_likelihoods, encoder_decoder_log_likelihoods
from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.models.decoder.hf import to_hf as decoder_to_hf
from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM
from pretrain.models.encoder_decoder.hf import to_hf as encoder_decoder_to_hf
from pretrain.objectives.base import AttentionSpec
from tests.helpers import perturb_norms_and_biases

pytest.importorskip("transformers")

VOCAB = 200


def _ids(rng: torch.Generator, n: int) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=rng).tolist()


def _requests(seed: int) -> list[tuple[list[int], list[int]]]:
    """Contexts of 1 to 30 tokens, continuations of 1 to 4: rows of unequal lengths; and
    answers to one context that share a row (one-token answers, and answers that differ in
    their last token only)."""
    rng = torch.Generator().manual_seed(seed)
    lengths = [(30, 1), (1, 3), (17, 4), (9, 2), (23, 1)]
    requests = [(_ids(rng, c), _ids(rng, n)) for c, n in lengths]
    context, (a, b, c, d) = _ids(rng, 12), _ids(rng, 4)
    shared = [(context, [a]), (context, [b]), (context, [a, c]), (context, [a, d])]
    # the same row (context + [a]) read as a longer context, which a prefix reads otherwise
    return [*requests[:2], *shared, (context + [a], [c]), *requests[2:]]


def _sum_log_probs(logits: torch.Tensor, first: int, continuation: list[int]) -> float:
    """Positions ``first ..`` of (T, V) logits scoring ``continuation``."""
    log_probs = logits[first : first + len(continuation)].float().log_softmax(-1)
    return float(log_probs[torch.arange(len(continuation)), continuation].sum())


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_decoder_scores_equal_hf_scoring_each_request_alone(style):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64,
                        style=style, init_std=0.1)  # fmt: skip
    model = perturb_norms_and_biases(DecoderLM(cfg)).eval()
    hf = decoder_to_hf(model).eval()
    requests = _requests(1)
    ours = decoder_log_likelihoods(model, requests, batch_size=3)  # batches of mixed lengths
    with torch.no_grad():
        for (context, continuation), score in zip(requests, ours, strict=True):
            logits = hf(torch.tensor([context + continuation])).logits[0]
            assert score == pytest.approx(
                _sum_log_probs(logits, len(context) - 1, continuation), abs=1e-4
            )


def test_decoder_prefix_scores_read_each_rows_context_bidirectionally():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
    model = DecoderLM(cfg).eval()
    requests = _requests(2)
    ours = decoder_log_likelihoods(model, requests, prefix=True, batch_size=5)
    causal = decoder_log_likelihoods(model, requests, prefix=False, batch_size=5)
    with torch.no_grad():
        for (context, continuation), score, causal_score in zip(
            requests, ours, causal, strict=True
        ):
            ids = torch.tensor([context + continuation])
            spec = AttentionSpec(kind="prefix", prefix_lengths=torch.tensor([len(context)]))
            logits = model.logits(model.forward_tokens(ids, attention=spec))[0]
            assert score == pytest.approx(
                _sum_log_probs(logits, len(context) - 1, continuation), abs=1e-5
            )
            if len(context) > 1:  # a bidirectional context is another computation
                assert abs(score - causal_score) > 1e-4


def test_encoder_decoder_scores_equal_hf_t5_scoring_each_request_alone():
    torch.manual_seed(0)
    cfg = EncoderDecoderConfig(vocab_size=VOCAB, d_model=64, d_kv=16, n_heads=4, d_ff=128,
                               n_layers=2, relative_attention_num_buckets=16,
                               relative_attention_max_distance=20)  # fmt: skip
    model = EncoderDecoderLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(0.25)  # logits of a few units, not tens (see parity tests)
    hf = encoder_decoder_to_hf(model).eval()
    rng = torch.Generator().manual_seed(3)
    shapes = [(30, 0, 2), (5, 1, 3), (12, 6, 1), (1, 0, 4)]  # encoder, decoder prefix, answer
    requests = [(_ids(rng, e), _ids(rng, p), _ids(rng, n)) for e, p, n in shapes]
    # answers to one input: one-token ones share a decoder row, all share the encoding
    encoder_input, prefix, (a, b, c) = _ids(rng, 9), _ids(rng, 2), _ids(rng, 3)
    shared = [
        (encoder_input, prefix, [a]),
        (encoder_input, prefix, [b]),
        (encoder_input, [], [a, c]),
    ]
    requests = [requests[0], *shared, *requests[1:], (encoder_input, prefix + [a], [c])]
    ours = encoder_decoder_log_likelihoods(model, requests, batch_size=4)
    with torch.no_grad():
        for (encoder_ids, prefix, continuation), score in zip(requests, ours, strict=True):
            labels = torch.tensor([prefix + continuation])
            logits = hf(input_ids=torch.tensor([encoder_ids]), labels=labels).logits[0]
            assert score == pytest.approx(
                _sum_log_probs(logits, len(prefix), continuation), abs=1e-4
            )
