"""A fine-tuned decoder classifier against its Hugging Face ``*ForSequenceClassification``
export: the same logits for a right-padded batch of texts of different lengths."""

from __future__ import annotations

import pytest
import torch

from pretrain.eval.classifier import SequenceClassifier
from pretrain.export_classifier import classifier_to_hf
from tests.parity.test_decoder_hf import CASES, VOCAB, make_model

pytest.importorskip("transformers")

PAD, EOS = 0, 2
LABELS = ["negative", "neutral", "positive"]


def _texts(seed: int) -> torch.Tensor:
    """Four texts of 3 to 9 tokens, each ending in EOS (the pooled token), right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.full((4, 10), PAD)
    for i, length in enumerate([9, 3, 6, 1]):
        rows[i, :length] = torch.randint(3, VOCAB, (length,), generator=g)
        rows[i, length] = EOS
    return rows


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_classifier_logits_equal_hf_sequence_classification(case):
    model = make_model(**CASES[case])
    torch.manual_seed(1)
    classifier = SequenceClassifier(model, "decoder", len(LABELS), PAD).eval()
    assert classifier.head.bias is None  # GPT's softmax(h W_y), as HF's score layer
    hf = classifier_to_hf(classifier, LABELS)
    expected = {"llama": "LlamaForSequenceClassification", "gpt2": "GPT2ForSequenceClassification",
                "mixtral": "MixtralForSequenceClassification"}[case.split("-")[0]]  # fmt: skip
    assert type(hf).__name__ == expected
    assert hf.config.id2label == dict(enumerate(LABELS))
    assert hf.config.label2id["positive"] == 2
    ids = _texts(0)
    with torch.no_grad():
        ours = classifier(ids)
        theirs = hf(input_ids=ids, attention_mask=(ids != PAD).long()).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert ours.std() > 0.1  # logits far apart enough that a wrong pooled row would show


def test_mean_pooled_classifiers_are_refused_naming_what_differs():
    from pretrain.models.encoder import EncoderConfig, EncoderLM

    encoder = EncoderLM(EncoderConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2))
    classifier = SequenceClassifier(encoder, "encoder", 2, PAD)
    assert classifier.head.bias is not None  # BERT's classifier has one
    with pytest.raises(ValueError, match="encoder classifier has no exact Hugging Face"):
        classifier_to_hf(classifier, ["a", "b"])
