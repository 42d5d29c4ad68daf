"""Export a run to a Hugging Face model directory that ``from_pretrained`` loads offline.

Llama-style decoders become ``LlamaForCausalLM``, GPT-2-style ones ``GPT2LMHeadModel`` and
encoders ``BertForMaskedLM`` (weights in safetensors); the tokenizer becomes a
``PreTrainedTokenizerFast`` with this package's special tokens, so
``AutoTokenizer.from_pretrained(DIR)`` and ``AutoModelFor...from_pretrained(DIR)`` both work
without the network. Options with no exact Hugging Face equivalent are refused, naming them
(see each family's ``hf.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pretrain.atomic import fresh_partial_dir, refuse_occupied, replace_dir
from pretrain.runs import load_run
from pretrain.tokenizer import BOS, CLS, EOS, MASK, PAD, SEP, Tokenizer

log = logging.getLogger(__name__)


def hf_tokenizer(tokenizer: Tokenizer) -> Any:
    """A ``PreTrainedTokenizerFast`` wrapping our tokenizer, with its special tokens named."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        sep_token=SEP,
        cls_token=CLS,
        clean_up_tokenization_spaces=False,
    )


def _warn_about_prefix_attention(cfg: Any) -> None:
    """A decoder trained with bidirectional attention over a prefix (prefix LM, UL2) exports to
    a causal Hugging Face class: same weights, but it attends causally inside the prefix too."""
    names = {objective.name for objective, _ in cfg.objective.components()}
    prefixed = names & {"prefix_lm", "ul2"}
    if cfg.model.family == "decoder" and prefixed:
        log.warning(
            "this decoder trained with %s, which attends bidirectionally over the prefix; the "
            "exported model attends causally everywhere, so wherever a prefix is involved its "
            "outputs differ from the trained model's",
            " and ".join(sorted(prefixed)),
        )


def export_hf(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    checkpoint: str = "latest",
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` of ``run_dir`` as a Hugging Face model + tokenizer into ``out``.

    The files are written into a temporary directory beside ``out`` and moved there when
    complete, so ``out`` never holds half an export, nor files of an earlier one.

    Raises:
        ValueError: ``out`` holds files and ``overwrite`` is False.
    """
    out = Path(out).resolve()  # "." and "dir/" name a directory with a parent
    refuse_occupied(out, overwrite)
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "export to Hugging Face needs transformers: pip install 'pretrain[hf]'"
        ) from e
    from pretrain.models.spec import to_hf

    run = load_run(run_dir, checkpoint)
    hf_model = to_hf(run.model, run.config.model.family)
    _warn_about_prefix_attention(run.config)
    special = run.tokenizer.special
    hf_model.config.bos_token_id = special.bos
    hf_model.config.eos_token_id = special.eos
    hf_model.config.pad_token_id = special.pad
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.bos_token_id = special.bos
        hf_model.generation_config.eos_token_id = special.eos
        hf_model.generation_config.pad_token_id = special.pad
    partial = fresh_partial_dir(out)  # the package's NAME.tmp convention (atomic.py)
    hf_model.save_pretrained(partial, safe_serialization=True)
    hf_tokenizer(run.tokenizer).save_pretrained(partial)
    replace_dir(partial, out)
    log.info("exported %s (step %d) to %s", run.checkpoint, run.step, out)
    return out
