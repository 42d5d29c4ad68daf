"""Export a fine-tuned decoder classifier (``pretrain finetune``'s output) to Hugging Face.

A Llama-style decoder becomes ``LlamaForSequenceClassification`` (a mixture of experts
``MixtralForSequenceClassification``), a GPT-2-style one ``GPT2ForSequenceClassification``:
the same backbone weights as ``pretrain export``, and the head as their ``score`` matrix.
Both pool the hidden state of the last token that is not padding, and fine-tuning pools the
EOS it appends to every text (:mod:`pretrain.eval.classifier`), so the exported tokenizer
appends that EOS too: ``tokenizer(texts, padding=True)`` into
``AutoModelForSequenceClassification`` gives the fine-tuned model's
logits. The labels' names become ``id2label``.

Encoder and encoder-decoder classifiers are refused: they mean-pool, while Hugging Face's
``BertForSequenceClassification`` pools ``[CLS]`` through a tanh layer and
``T5ForSequenceClassification`` the decoder's EOS through a two-layer head.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pretrain.atomic import fresh_partial_dir, refuse_occupied, replace_dir
from pretrain.eval.classifier import SequenceClassifier
from pretrain.eval.finetune import CLASSIFIER_FILE, SUMMARY_FILE
from pretrain.export import hf_tokenizer
from pretrain.runs import open_run
from pretrain.tokenizer import EOS, Tokenizer

log = logging.getLogger(__name__)


def classifier_to_hf(classifier: SequenceClassifier, label_names: list[Any]) -> Any:
    """The Hugging Face ``*ForSequenceClassification`` of a decoder ``classifier``, its labels
    named; in eval mode, with the classifier's dtype and device.

    Raises:
        ValueError: the classifier is not a decoder's, or its decoder has options no Hugging
            Face class expresses (named).
    """
    import transformers

    from pretrain.models.common.hf_convert import load_into_hf
    from pretrain.models.decoder.hf import hf_config, hf_state

    if classifier.family != "decoder":
        raise ValueError(
            f"a fine-tuned {classifier.family} classifier has no exact Hugging Face "
            "equivalent: it mean-pools the states, BertForSequenceClassification pools [CLS] "
            "through a tanh layer and T5ForSequenceClassification the decoder's EOS through "
            "a two-layer head; decoders export (LlamaForSequenceClassification, "
            "GPT2ForSequenceClassification)"
        )
    backbone = classifier.backbone
    config = hf_config(backbone.cfg)
    names = [str(name) for name in label_names]  # integer labels too: HF's are strings
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.pad_token_id = classifier.pad_id  # how HF finds each row's last real token
    if backbone.cfg.n_experts:
        hf_cls = transformers.MixtralForSequenceClassification
    elif backbone.cfg.style == "llama":
        hf_cls = transformers.LlamaForSequenceClassification
    else:
        hf_cls = transformers.GPT2ForSequenceClassification
    state = {k: v for k, v in hf_state(backbone).items() if not k.startswith("lm_head.")}
    state["score.weight"] = classifier.head.weight.detach()
    return load_into_hf(hf_cls(config), state, classifier.head.weight)


def eos_appending_tokenizer(tokenizer: Tokenizer, max_len: int) -> Any:
    """Our tokenizer as a ``PreTrainedTokenizerFast`` that ends every text with EOS (the
    pooled token) and cuts texts, with ``truncation=True``, to ``max_len`` tokens with it:
    fine-tuning's encoding (:func:`pretrain.eval.finetune.encode`)."""
    from tokenizers import processors

    hf = hf_tokenizer(tokenizer)
    backend = hf.backend_tokenizer
    append = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tokenizer.special.eos)]
    )
    kept = backend.post_processor
    backend.post_processor = append if kept is None else processors.Sequence([kept, append])
    hf.model_max_length = max_len
    hf.padding_side = "right"
    return hf


def export_classifier_hf(
    finetuned_dir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the classifier ``pretrain finetune`` saved in ``finetuned_dir`` as a Hugging Face
    model and tokenizer into ``out``, whole or not at all.

    The architecture and tokenizer come from the run it fine-tuned (named in its
    ``finetune.json``); the weights, backbone and head, from ``classifier.safetensors``.

    Raises:
        ValueError: ``out`` holds files and ``overwrite`` is False; the classifier is not a
            decoder's.
        FileNotFoundError: ``finetuned_dir`` or the run it names is incomplete.
    """
    from safetensors.torch import load_model

    finetuned_dir = Path(finetuned_dir)
    out = Path(out).resolve()
    refuse_occupied(out, overwrite)
    summary_path = finetuned_dir / SUMMARY_FILE
    if not summary_path.exists():
        raise FileNotFoundError(
            f"{summary_path}: missing; give a directory written by pretrain finetune"
        )
    summary = json.loads(summary_path.read_text())
    cfg, tokenizer, backbone = open_run(summary["run"])
    classifier = SequenceClassifier(
        backbone, summary["family"], len(summary["label_names"]), tokenizer.special.pad
    )
    load_model(classifier, str(finetuned_dir / CLASSIFIER_FILE))
    hf_model = classifier_to_hf(classifier.eval(), summary["label_names"])
    special = tokenizer.special
    hf_model.config.bos_token_id = special.bos
    hf_model.config.eos_token_id = special.eos
    max_len = summary["settings"]["max_len"]
    partial = fresh_partial_dir(out)
    hf_model.save_pretrained(partial, safe_serialization=True)
    eos_appending_tokenizer(tokenizer, max_len).save_pretrained(partial)
    replace_dir(partial, out)
    log.info(
        "exported the classifier of %s (%s, step %d) to %s",
        finetuned_dir,
        cfg.model.family,
        summary["step"],
        out,
    )
    return out
