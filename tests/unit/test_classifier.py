"""The fine-tuning classifier's pooled features: padding never changes a text's vector."""

from __future__ import annotations

import pytest
import torch

from pretrain.eval.classifier import SequenceClassifier
from pretrain.eval.finetune import padded
from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.models.encoder import EncoderConfig, EncoderLM
from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM

VOCAB, PAD = 128, 0
SHAPE = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4)


def backbone(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "encoder":
        return EncoderLM(EncoderConfig(**SHAPE, max_seq_len=32, pad_id=PAD))
    if family == "decoder":
        return DecoderLM(DecoderConfig(**SHAPE, max_seq_len=32))
    return EncoderDecoderLM(EncoderDecoderConfig(**SHAPE, d_kv=8, d_ff=64, pad_id=PAD))


def rows() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (12, 5, 9)]


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "decoder"])
def test_a_padded_batch_gives_each_text_the_vector_it_has_alone(family):
    model = SequenceClassifier(backbone(family), family, num_labels=3, pad_id=PAD).eval()
    texts = rows()
    with torch.no_grad():
        batch = model.features(padded(texts, PAD))  # (3, d): rows 1 and 2 padded
        alone = torch.cat([model.features(torch.tensor([row])) for row in texts])
        assert model(padded(texts, PAD)).shape == (3, 3)
    assert (batch - alone).abs().max().item() < 1e-5
    # The vector is the text's: another text gives another one.
    assert (alone[0] - alone[1]).abs().max().item() > 1e-3


def test_the_decoder_pools_its_last_token_which_saw_the_whole_text():
    model = SequenceClassifier(backbone("decoder"), "decoder", 2, PAD).eval()
    text = rows()[0]
    changed = [VOCAB - 1 - text[0], *text[1:]]  # another first token
    with torch.no_grad():
        hidden = model.backbone.forward_tokens(torch.tensor([text]))[0]
        pooled = model.features(torch.tensor([text]))[0]
        other = model.features(torch.tensor([changed]))[0]
    assert torch.equal(pooled, hidden[-1])
    assert (pooled - other).abs().max().item() > 1e-4  # the first token reaches the last


def test_xlnet_has_no_classifier_here():
    with pytest.raises(ValueError, match="supports model.family encoder, encoder_decoder, dec"):
        SequenceClassifier(backbone("encoder"), "xlnet", 2, PAD)
