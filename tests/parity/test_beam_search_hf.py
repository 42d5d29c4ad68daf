"""Beam search against Hugging Face ``generate(num_beams=k)`` with its defaults, token for
token, on tiny random decoders and a T5; EOS is a token the search meets, so hypotheses
finish at different steps and the early-stop bound is exercised."""

from __future__ import annotations

import pytest
import torch

from pretrain.beam_search import decoder_beam_search, encoder_decoder_beam_search
from pretrain.generate import generate
from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.models.decoder.hf import to_hf as decoder_to_hf
from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM
from pretrain.models.encoder_decoder.hf import to_hf as encoder_decoder_to_hf
from tests.helpers import perturb_norms_and_biases

pytest.importorskip("transformers")

VOCAB = 64  # few tokens: beams collide and EOS comes up
NEW = 12


def _prompts(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(1, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _hf_beams(hf, num_beams: int, eos: int, length_penalty=1.0, **inputs) -> list[list[int]]:
    out = hf.generate(**inputs, num_beams=num_beams, do_sample=False, max_new_tokens=NEW,
                      eos_token_id=eos, pad_token_id=eos, length_penalty=length_penalty,
                      early_stopping=False)  # fmt: skip
    rows = []
    start = 1 if hf.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    for row in out[:, start:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def _eos_met_by(greedy: list[int]) -> int:
    """The token greedy decoding writes first: the search meets it."""
    return greedy[0]


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("num_beams", [2, 4])
def test_decoder_beams_equal_hf(style, num_beams):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64,
                        style=style, init_std=0.2)  # fmt: skip
    model = perturb_norms_and_biases(DecoderLM(cfg)).eval()
    hf = decoder_to_hf(model).eval()
    prompts = _prompts(1, (3, 5))
    greedy = generate(model, prompts[0], NEW, temperature=0)[5:].tolist()
    eos = _eos_met_by(greedy)
    ours = decoder_beam_search(model, prompts, NEW, num_beams, eos)
    theirs = _hf_beams(
        hf, num_beams, eos, input_ids=prompts, attention_mask=torch.ones_like(prompts)
    )
    assert ours == theirs
    assert any(row[-1] == eos and len(row) < NEW for row in ours)  # a hypothesis ended early
    # one beam is greedy decoding
    assert decoder_beam_search(model, prompts[:1], NEW, 1, None)[0] == greedy
    # one prompt (T,) is a batch of one; an empty one is refused before the model runs
    assert decoder_beam_search(model, prompts[0], NEW, num_beams, eos) == ours[:1]
    with pytest.raises(ValueError, match="T >= 1"):
        decoder_beam_search(model, prompts[:, :0], NEW, num_beams, eos)


@pytest.mark.parametrize(("seed", "first_token", "num_beams"), [(1, 2, 3), (2, 0, 2), (4, 2, 2)])
def test_heuristics_of_hf_search_are_kept(seed, first_token, num_beams):
    """Cases where HF's rules change the output: only the best ``num_beams`` extensions may
    finish, and the search stops once no running beam can beat the worst finished one."""
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=32, d_model=64, n_layers=2, n_heads=4, max_seq_len=64,
                        style="gpt2", init_std=0.3)  # fmt: skip
    model = perturb_norms_and_biases(DecoderLM(cfg)).eval()
    prompts = torch.randint(1, 32, (4, 4), generator=torch.Generator().manual_seed(seed))
    eos = generate(model, prompts[0], 16, temperature=0)[4 + first_token].item()
    out = decoder_to_hf(model).eval().generate(
        input_ids=prompts, attention_mask=torch.ones_like(prompts), num_beams=num_beams,
        do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=eos,
    )  # fmt: skip
    theirs = [row[: row.index(eos) + 1] if eos in row else row for row in out[:, 4:].tolist()]
    assert decoder_beam_search(model, prompts, 16, num_beams, eos) == theirs


@pytest.mark.parametrize("num_beams", [3])
def test_encoder_decoder_beams_equal_hf(num_beams):
    torch.manual_seed(0)
    cfg = EncoderDecoderConfig(vocab_size=VOCAB, d_model=64, d_kv=16, n_heads=4, d_ff=128,
                               n_layers=2)  # fmt: skip
    model = EncoderDecoderLM(cfg).eval()
    hf = encoder_decoder_to_hf(model).eval()
    inputs = _prompts(2, (2, 9))
    inputs[1, 6:] = cfg.pad_id  # a padded input: its pad keys are hidden
    mask = (inputs != cfg.pad_id).long()
    with torch.no_grad():
        greedy = hf.generate(input_ids=inputs[:1], max_new_tokens=NEW, do_sample=False,
                             num_beams=1)[0, 1:].tolist()  # fmt: skip
    eos = _eos_met_by(greedy)
    ours = encoder_decoder_beam_search(model, inputs, NEW, num_beams, eos)
    theirs = _hf_beams(hf, num_beams, eos, input_ids=inputs, attention_mask=mask)
    assert ours == theirs
    assert any(row[-1] == eos and len(row) < NEW for row in ours)
    assert encoder_decoder_beam_search(model, inputs[0], NEW, num_beams, eos) == ours[:1]


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 2.0])
def test_length_penalty_is_hfs(length_penalty):
    """Finished hypotheses are scored by their sum over length ** length_penalty (0: the sum;
    above 1: longer ones favoured), as in HF."""
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64,
                        style="gpt2", init_std=0.2)  # fmt: skip
    model = perturb_norms_and_biases(DecoderLM(cfg)).eval()
    prompts = _prompts(1, (3, 5))
    eos = _eos_met_by(generate(model, prompts[0], NEW, temperature=0)[5:].tolist())
    ours = decoder_beam_search(model, prompts, NEW, 3, eos, length_penalty=length_penalty)
    hf = decoder_to_hf(model).eval()
    mask = torch.ones_like(prompts)
    assert ours == _hf_beams(hf, 3, eos, length_penalty, input_ids=prompts, attention_mask=mask)
