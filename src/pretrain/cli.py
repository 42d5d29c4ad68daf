"""The ``pretrain`` command: argument parsing and dispatch only; the work lives in the modules.

pretrain quickstart [--minutes M] [--out DIR]
pretrain tokenizer train --input PATH... --vocab-size N --out DIR
pretrain data tokenize --tokenizer DIR --input PATH... --out DIR [--val-fraction F] [--workers N]
pretrain data stats DIR [--json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pretrain import __version__

EXIT_BAD_INPUT = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


TRAIN_EPILOG = """\
Every config key can be set on the command line as --section.key=value, after or instead
of --config: e.g. --model.size=tiny --optim.lr=3e-4 --train.max_steps=2000. The sections are
model, data, objective, optim, train, eval, checkpoint, distributed, log and run;
--print-config shows every key with the value it would train with."""


def _add_reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-field", default="text", help="JSON/Parquet field holding the text")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description="From raw text to a pretrained language model: data, tokenizer, "
        "training, evaluation, generation, fine-tuning, export and scaling laws.",
    )
    parser.add_argument("--version", action="version", version=f"pretrain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    quick = commands.add_parser("quickstart", help="run the whole path on bundled text")
    quick.add_argument(
        "--minutes",
        type=_positive_float,
        default=5.0,
        help="minutes of training (default 5); preparing the data and evaluating come on top",
    )
    quick.add_argument("--out", default="runs/quickstart", help="output directory")
    quick.add_argument("--workers", type=int, default=2, help="tokenizer processes")

    tok = commands.add_parser("tokenizer", help="train tokenizers").add_subparsers(
        dest="action", required=True
    )
    tok_train = tok.add_parser("train", help="train a byte-level BPE tokenizer")
    tok_train.add_argument("--input", nargs="+", required=True, help="files, dirs or globs")
    tok_train.add_argument("--vocab-size", type=int, required=True)
    tok_train.add_argument("--out", required=True, help="directory for tokenizer.json")
    tok_train.add_argument("--min-frequency", type=int, default=2)
    tok_train.add_argument("--json", action="store_true", help="print the metadata as JSON")
    tok_train.add_argument(
        "--overwrite", action="store_true", help="replace the tokenizer that --out holds"
    )
    _add_reader_options(tok_train)

    data = commands.add_parser("data", help="data preparation").add_subparsers(
        dest="action", required=True
    )
    tokz = data.add_parser("tokenize", help="tokenize documents into train/val shards")
    tokz.add_argument("--tokenizer", required=True, help="directory or tokenizer.json")
    tokz.add_argument("--input", nargs="+", required=True, help="files, dirs or globs")
    tokz.add_argument("--out", required=True, help="output shard directory")
    tokz.add_argument("--val-fraction", type=float, default=0.0)
    tokz.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    tokz.add_argument("--id-field", default="id")
    tokz.add_argument("--shard-max-tokens", type=int, default=100_000_000)
    tokz.add_argument("--overwrite", action="store_true", help="delete what --out holds first")
    tokz.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    _add_reader_options(tokz)

    train = commands.add_parser(
        "train",
        help="pretrain a model from a YAML config",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", help="YAML config (configs/*.yaml); defaults apply without one")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (the file, then the overrides) as YAML and exit",
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        choices=["latest", "auto"],
        help="continue from the latest checkpoint; --resume=auto also starts a new run when "
        "there is none yet (for restarts under torchrun --max-restarts or a job scheduler)",
    )

    ev = commands.add_parser("eval", help="val loss, perplexity and bits per byte of a run")
    ev.add_argument("--run", required=True, help="run directory")
    ev.add_argument("--checkpoint", default="latest", help="latest, best or step_N")
    ev.add_argument("--data", help="shard directory whose val split to use (default: the run's)")
    ev.add_argument("--max-batches", type=_positive_int, help="evaluate at most this many batches")
    ev.add_argument("--json", action="store_true")

    gen = commands.add_parser(
        "generate",
        help="sample text from a run's model",
        description="Decoders continue the prompt. Encoder-decoder models (T5, BART) read it "
        "as the encoder's input; sentinels <|extra_id_0|>, <|extra_id_1|>, ... in it are "
        "filled. Encoders (masked LM) predict each <|mask|> in it.",
    )
    gen.add_argument("--run", required=True, help="run directory")
    gen.add_argument(
        "--prompt",
        default="",
        help="text to continue; or, for encoder-decoder and encoder runs, text with blanks",
    )
    gen.add_argument("--checkpoint", default="latest")
    # Sampling settings default to None so that one given to an encoder run, which samples
    # nothing, is refused instead of ignored (generate_commands.sampling_settings).
    gen.add_argument("--max-new-tokens", type=_positive_int, help="at most (default 100)")
    gen.add_argument("--temperature", type=_non_negative_float, help="0: greedy (default 0.8)")
    gen.add_argument(
        "--top-k",
        type=int,
        help="sample among the k most likely (encoders: "
        "how many predictions to show per <|mask|>, default 5)",
    )
    gen.add_argument(
        "--top-p",
        type=float,
        help="sample among the most likely tokens whose probabilities add up to p",
    )
    gen.add_argument("--seed", type=int, help="of the sampling (default 0)")
    gen.add_argument("--num-beams", type=_positive_int, default=1,
                     help="beam search with this many beams instead of sampling (Hugging "
                     "Face's search and defaults); 1: sampling, or greedy at "
                     "--temperature 0")  # fmt: skip
    gen.add_argument("--length-penalty", type=float, default=1.0,
                     help="beam search: a finished hypothesis scores its summed log-probability "
                     "over length ** this; above 1 favours longer ones (default 1)")  # fmt: skip
    gen.add_argument(
        "--attention",
        choices=["auto", "causal", "prefix"],
        default="auto",
        help="how the prompt attends to itself; auto: as the run trained (bidirectional for "
        "a prefix LM or UL2 decoder without causal LM)",
    )
    gen.add_argument(
        "--ul2-mode",
        choices=["R", "S", "X"],
        help="UL2 runs: the mode token before the prompt (EOS follows); default S, or R for "
        "an encoder-decoder prompt with sentinels",
    )
    gen.add_argument("--json", action="store_true")

    exp = commands.add_parser(
        "export",
        help="export a run, or a fine-tuned decoder classifier, to Hugging Face format",
        description="--run: the run's model as LlamaForCausalLM, GPT2LMHeadModel, "
        "BertForMaskedLM, T5ForConditionalGeneration or XLNetLMHeadModel. --finetuned: a "
        "decoder classifier written by pretrain finetune, as LlamaForSequenceClassification "
        "or GPT2ForSequenceClassification with a tokenizer that appends the EOS it pools.",
    )
    source = exp.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory")
    source.add_argument("--finetuned", help="output directory of pretrain finetune")
    exp.add_argument("--format", choices=["hf"], default="hf")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument("--checkpoint", help="with --run: latest (default), best or step_N")
    exp.add_argument("--overwrite", action="store_true", help="replace what --out holds")

    ft = commands.add_parser(
        "finetune",
        help="fine-tune a run's model as a text classifier; report validation accuracy",
        description="Every weight trains with a new linear head on pooled features (mean of "
        "an encoder's states, a decoder's state at an appended EOS), BERT's recipe: AdamW, "
        "10% warmup, linear decay to zero; the epoch with the best validation accuracy is "
        "kept. Data: JSON Lines (or Parquet) records with a text and a label.",
    )
    ft.add_argument("--run", required=True, help="run directory")
    ft.add_argument("--train", nargs="+", required=True, help="labeled training files or dirs")
    ft.add_argument("--val", nargs="+", required=True, help="labeled validation files or dirs")
    ft.add_argument("--out", required=True, help="output directory")
    ft.add_argument("--checkpoint", default="latest")
    ft.add_argument("--epochs", type=_positive_int, default=3)
    ft.add_argument("--lr", type=_positive_float, default=5e-5)
    ft.add_argument("--batch-size", type=_positive_int, default=32)
    ft.add_argument("--max-len", type=_positive_int, help="tokens per example at most "
                    "(default: the run's train.seq_len)")  # fmt: skip
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--text-key", default="text")
    ft.add_argument("--label-key", default="label")
    ft.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ft.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="bf16: autocast, fp32 weights; auto: bf16 on CUDA only")  # fmt: skip
    ft.add_argument("--random-init", action="store_true",
                    help="train the same network from fresh weights (the baseline)")  # fmt: skip
    ft.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    ft.add_argument("--json", action="store_true")

    fs = commands.add_parser(
        "fewshot",
        help="in-context (few-shot) accuracy of a run's model on classification or "
        "multiple-choice questions, no training",
        description="Each question follows K solved ones drawn from --train (GPT-3's few-shot "
        "evaluation); each choice (a label's answer word, or one of the record's choices) is "
        "scored by its log-likelihood as the continuation. Reports accuracy, accuracy per "
        "character of the choice and calibrated accuracy (minus each choice's likelihood "
        "without the text). Decoder and encoder-decoder runs.",
    )
    fs.add_argument("--run", required=True, help="run directory")
    fs.add_argument("--train", nargs="+", required=True,
                    help="labeled files or dirs to draw the solved examples from")  # fmt: skip
    fs.add_argument("--eval", nargs="+", required=True, help="labeled files or dirs to score")
    fs.add_argument("--shots", type=_non_negative_int, default=5,
                    help="solved examples before each, default 5 (fewer if they do not "
                    "fit)")  # fmt: skip
    fs.add_argument("--template", default="{text}\\nAnswer:",
                    help="an example around {text}; \\n and \\t are a newline and a tab "
                    "(default: '{text}\\nAnswer:')")  # fmt: skip
    fs.add_argument("--answer", nargs="+", metavar="LABEL=WORD",
                    help="the answer word of each label, e.g. 0=negative 1=positive "
                    "(default: the labels as written)")  # fmt: skip
    fs.add_argument("--choices-key", metavar="KEY",
                    help="multiple choice: each record's choices are the list under KEY and "
                    "its label is the index of the right one")  # fmt: skip
    fs.add_argument("--checkpoint", default="latest")
    fs.add_argument("--max-examples", type=_positive_int, help="score the first N only")
    fs.add_argument("--batch-size", type=_positive_int, default=16)
    fs.add_argument("--seed", type=int, default=0, help="of the draw of solved examples")
    fs.add_argument("--text-key", default="text")
    fs.add_argument("--label-key", default="label")
    fs.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    fs.add_argument("--predictions", help="write one JSON line per example to this file")
    fs.add_argument("--json", action="store_true")

    from pretrain.data_commands import add_parsers
    from pretrain.scaling_commands import add_parsers as add_scaling_parsers

    add_parsers(data)
    add_scaling_parsers(commands)
    stats = data.add_parser("stats", help="counts of a shard directory; verifies checksums")
    stats.add_argument("dir")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--no-checksum", action="store_true", help="check sizes only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown and args.command != "train":
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = unknown
    from pretrain.console import rank_prefix, setup_logging

    setup_logging(args.verbose)
    rank = rank_prefix()  # "" but for the ranks other than 0 under torchrun
    from pretrain.data.readers import DocumentError
    from pretrain.data.shards import ShardError
    from pretrain.train.errors import BatchWorkerError, CheckpointError, TrainingError
    from pretrain.train.interrupt import TrainingInterrupted

    expected = (
        DocumentError, ShardError, CheckpointError, TrainingError, BatchWorkerError, ValueError
    )  # fmt: skip
    try:
        return _dispatch(args)
    except (*expected, FileNotFoundError, ImportError) as e:
        print(f"{rank}error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except TrainingInterrupted as e:  # the trainer saved a checkpoint and says how to go on
        print(f"{rank}interrupted; {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.command == "train":
            message = "to continue from the last checkpoint, rerun the same command with --resume"
        else:
            message = "rerun the same command to continue where it stopped"
        print(f"{rank}interrupted; {message}", file=sys.stderr)
        return 130


_HANDLERS = {
    ("data", "prepare"): "data_commands.data_prepare",
    ("data", "filter"): "data_commands.data_filter",
    ("data", "dedup"): "data_commands.data_dedup",
    ("data", "mix"): "data_commands.data_mix",
    ("data", "score"): "data_commands.data_score",
    ("quickstart", None): "commands.quickstart",
    ("tokenizer", "train"): "commands.tokenizer_train",
    ("data", "tokenize"): "commands.data_tokenize",
    ("data", "stats"): "commands.data_stats",
    ("train", None): "commands.train",
    ("eval", None): "commands.eval_run",
    ("generate", None): "generate_commands.generate_text",
    ("export", None): "commands.export",
    ("finetune", None): "commands.finetune",
    ("fewshot", None): "commands.few_shot",
    ("scaling", "flops"): "scaling_commands.scaling_flops",
    ("scaling", "plan"): "scaling_commands.scaling_plan",
    ("scaling", "fit"): "scaling_commands.scaling_fit",
    ("scaling", "ladder"): "scaling_commands.scaling_ladder",
}
"""Each command's handler as ``module.function`` under ``pretrain``, imported when run: the
data, tokenizer and scaling commands never import torch (3.5 s of a laptop CPU's time)."""


def _dispatch(args: argparse.Namespace) -> int:
    import importlib

    module, function = _HANDLERS[(args.command, getattr(args, "action", None))].split(".")
    return getattr(importlib.import_module(f"pretrain.{module}"), function)(args)


def run() -> None:
    """The ``pretrain`` console script: :func:`main`, then the exit a torchrun worker needs."""
    from pretrain.distributed.launch import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
