"""``pretrain generate``: what each model family does with a prompt.

- decoder: continues the prompt (:mod:`pretrain.generate`; with ``--num-beams``,
  :mod:`pretrain.beam_search`), laid out as its objective trained it (:mod:`pretrain.prompting`);
- encoder_decoder: the prompt is the encoder's input and the decoder writes the output
  (:mod:`pretrain.generate_encoder_decoder`); a prompt with sentinels comes back filled;
- encoder: predicts the prompt's ``<|mask|>`` marks (:mod:`pretrain.fill_mask`).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def generate_text(args: argparse.Namespace) -> int:
    from pretrain.runs import load_run

    run = load_run(args.run, args.checkpoint)
    family = run.config.model.family
    if family == "xlnet":
        raise ValueError(
            f"{args.run}: generate does not sample from XLNet (model.family 'xlnet'); export "
            "it (pretrain export) and use the Hugging Face XLNetLMHeadModel"
        )
    if family != "decoder" and args.attention != "auto":
        raise ValueError(f"--attention applies to decoder runs; this run is {family!r}")
    if family == "encoder" and args.ul2_mode is not None:
        raise ValueError("--ul2-mode: this run did not train with UL2 (an encoder)")
    sampling_settings(args, family)
    if family == "encoder":
        result = _fill_mask(run, args)
    elif family == "encoder_decoder":
        result = _encoder_decoder(run, args)
    else:
        result = _continue(run, args)
    print(json.dumps(result, indent=2) if args.json else _display(result))
    return 0


SAMPLING_DEFAULTS = {"max_new_tokens": 100, "temperature": 0.8, "top_p": None, "seed": 0}
"""The settings of runs that write tokens, with their defaults (None: not used)."""


def sampling_settings(args: argparse.Namespace, family: str) -> None:
    """Fill in the sampling settings' defaults; where nothing is sampled (an encoder run,
    or beam search) refuse any that was given, rather than ignore it."""
    given = [name for name in SAMPLING_DEFAULTS if getattr(args, name) is not None]
    if family == "encoder" and (given or args.num_beams > 1):
        raise ValueError(
            f"{_flags(given or ['num_beams'])}: an encoder run writes no tokens, it predicts "
            "each <|mask|> of the prompt in one pass (--top-k: how many predictions to show "
            "per mark)"
        )
    sampling = [name for name in given if name != "max_new_tokens"]
    if args.top_k is not None:
        sampling.append("top_k")
    if args.num_beams > 1 and sampling:
        raise ValueError(f"{_flags(sampling)}: beam search (--num-beams) samples nothing")
    if args.num_beams == 1 and args.length_penalty != 1.0:
        raise ValueError("--length-penalty applies to beam search: give --num-beams 2 or more")
    for name, default in SAMPLING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _flags(names: list[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _sampling(args: argparse.Namespace, eos: int) -> dict[str, Any]:
    """The keyword arguments of :func:`~pretrain.generate.generate` (and of the
    encoder-decoder's) that the command line sets."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "eos_id": eos,
        "generator": torch.Generator().manual_seed(args.seed),
    }


def _search(args: argparse.Namespace, eos: int) -> dict[str, Any]:
    """The keyword arguments of :mod:`pretrain.beam_search`'s searches that the command line
    sets."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "num_beams": args.num_beams,
        "eos_id": eos,
        "length_penalty": args.length_penalty,
    }


def _display(result: dict[str, Any]) -> str:
    """The text, then what a blank prompt adds: the filled prompt, each mask's candidates."""
    lines = [result["text"]]
    if "masks" in result:
        for i, options in enumerate(result["masks"]):
            tokens = ", ".join(f"{c['token']!r} {c['probability']:.3f}" for c in options)
            lines.append(f"<|mask|> {i}: {tokens}")
    elif "filled" in result:
        lines.append(f"filled: {result['filled']}")
    return "\n".join(lines)


def _continue(run: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pretrain.generate import generate
    from pretrain.prompting import prompt_ids, prompt_plan

    plan = prompt_plan(run.config, args.attention, args.ul2_mode)
    log.info("prompt: %s", plan.describe())
    prompt = prompt_ids(args.prompt, run.tokenizer, plan)
    eos = run.tokenizer.special.eos
    if args.num_beams > 1:
        from pretrain.beam_search import decoder_beam_search

        [ids] = decoder_beam_search(
            run.model, torch.tensor([prompt]), **_search(args, eos), prefix=plan.prefix
        )
        new = _until_eos(ids, eos)
    else:
        ids = generate(run.model, torch.tensor(prompt), **_sampling(args, eos), prefix=plan.prefix)
        new = _until_eos(ids[len(prompt) :].tolist(), eos)
    text = args.prompt + run.tokenizer.decode(new)
    return {"prompt": args.prompt, "text": text, "new_token_ids": new}


def _encoder_decoder(run: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pretrain.blank_prompts import encoder_decoder_prompt_ids
    from pretrain.generate_encoder_decoder import fill_spans, generate_encoder_decoder

    tokenizer, special = run.tokenizer, run.tokenizer.special
    prompt, mode = encoder_decoder_prompt_ids(args.prompt, tokenizer, run.config, args.ul2_mode)
    log.info("encoder input: %s", tokenizer.decode(prompt))
    if args.num_beams > 1:
        from pretrain.beam_search import encoder_decoder_beam_search

        [ids] = encoder_decoder_beam_search(
            run.model, torch.tensor([prompt]), **_search(args, special.eos)
        )
    else:
        ids = generate_encoder_decoder(
            run.model, torch.tensor(prompt), **_sampling(args, special.eos)
        ).tolist()
    new = _until_eos(ids, special.eos)
    if new[:1] == [special.bos]:  # BART's targets begin with BOS, as its inputs do
        new = new[1:]
    result = {"prompt": args.prompt, "text": tokenizer.decode(new), "new_token_ids": new}
    if mode is not None:
        result["ul2_mode"] = mode
    if set(prompt) & set(special.sentinels):
        text_ids = [
            t for t in prompt if t not in (special.bos, special.eos, *special.modes.values())
        ]
        filled = fill_spans(text_ids, new, special.sentinels)
        result["filled"] = tokenizer.decode(filled)
    return result


def _fill_mask(run: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pretrain.blank_prompts import encode_with_blanks
    from pretrain.fill_mask import fill_mask, filled_ids

    tokenizer = run.tokenizer
    prompt = encode_with_blanks(args.prompt, tokenizer)
    top_k = args.top_k or 5
    predictions = fill_mask(run.model, torch.tensor(prompt), tokenizer.special.mask, top_k)
    candidates = [
        [
            {"token": tokenizer.decode([t]), "token_id": t, "probability": p}
            for t, p in zip(pred.token_ids, pred.probabilities, strict=True)
        ]
        for pred in predictions
    ]
    filled = tokenizer.decode(filled_ids(prompt, predictions))
    return {"prompt": args.prompt, "text": filled, "filled": filled, "masks": candidates}


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
