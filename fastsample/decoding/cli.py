"""``python -m fastsample generate``: text generation with local Hugging Face checkpoint directories."""
from __future__ import annotations

import argparse
import os
import sys

import torch

STRATEGIES = ("greedy", "sample", "beam", "contrastive", "speculative")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


class UsageError(Exception):
    """A problem with the command line or the checkpoints, reported as one line and exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastsample generate",
                                description="Generate text with a local Hugging Face causal LM checkpoint.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (model + tokenizer)")
    p.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                   help="prompt text; repeat the option for a batch")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy")
    p.add_argument("--draft", metavar="DIR", help="draft model directory (speculative)")
    p.add_argument("--amateur", metavar="DIR", help="amateur model directory (contrastive)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="row r samples with Philox seed SEED + r")
    g = p.add_argument_group("sampling (sample, speculative --sample)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--typical-p", type=float, help="typical filtering mass (sample)")
    g.add_argument("--epsilon", type=float, help="epsilon cutoff (sample)")
    g.add_argument("--order", choices=("hf", "vllm", "llama.cpp"), help="filter order of the stack sampler")
    g.add_argument("--top-n-sigma", type=float, help="top-n-sigma n (stack sampler)")
    g.add_argument("--eta", type=float, help="eta cutoff (stack sampler)")
    g.add_argument("--xtc-probability", type=float, help="XTC probability (stack sampler)")
    g.add_argument("--xtc-threshold", type=float, help="XTC threshold (stack sampler, default 0.1)")
    g.add_argument("--dynatemp-range", type=float, help="dynamic temperature range (stack sampler)")
    g.add_argument("--dynatemp-exponent", type=float, help="dynamic temperature exponent (default 1)")
    g.add_argument("--dry-multiplier", type=float, help="DRY multiplier (stack sampler)")
    g.add_argument("--dry-base", type=float, help="DRY base (default 1.75)")
    g.add_argument("--dry-allowed-length", type=int, help="DRY allowed length (default 2)")
    g.add_argument("--dry-penalty-last-n", type=int, help="DRY window in tokens (default -1: everything)")
    g.add_argument("--dry-sequence-breakers", metavar="IDS", help="DRY sequence breakers: comma-separated token ids")
    g.add_argument("--mirostat", type=int, choices=(0, 2), default=0, help="2: mirostat v2 (stack sampler)")
    g.add_argument("--mirostat-tau", type=float, help="mirostat target surprise (default 5)")
    g.add_argument("--mirostat-eta", type=float, help="mirostat learning rate (default 0.1)")
    g.add_argument("--adaptive", action="store_true", help="entropy-adaptive parameters per row and step (sample)")
    g.add_argument("--sample", action="store_true", help="speculative decoding in sampling mode (default greedy)")
    g = p.add_argument_group("processors (greedy, sample, beam)")
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g = p.add_argument_group("beam search (beam, contrastive)")
    g.add_argument("--num-beams", type=int, default=None, help="default 4 for beam, 1 for contrastive")
    g.add_argument("--length-penalty", type=float, default=1.0)
    g.add_argument("--early-stopping", choices=("true", "false", "never"), default="false")
    g.add_argument("--num-return-sequences", type=int, default=1)
    g = p.add_argument_group("contrastive / speculative")
    g.add_argument("--alpha", type=float, default=0.1, help="plausible head: p_e >= alpha * max p_e")
    g.add_argument("--beta", type=float, help="O'Brien & Lewis weight; omit for Li et al.'s log-ratio")
    g.add_argument("--amateur-temperature", type=float, default=1.0)
    g.add_argument("--gamma", type=int, default=4, help="draft tokens per target forward")
    g.add_argument("--proposer", choices=("draft", "ngram"), default="draft",
                   help="speculative: a draft model (--draft DIR) or prompt lookup (ngram, no draft model)")
    g.add_argument("--tree", metavar="DEPTH,BRANCHING", type=_tree_arg,
                   help="speculative: propose a token tree instead of a chain of --gamma tokens")
    g.add_argument("--tree-mode", choices=("topk", "sample"), default="topk",
                   help="draft trees: top-k expansion (default) or children sampled from the draft (--sample)")
    return p


def _tree_arg(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--tree takes DEPTH,BRANCHING (two positive ints), got {text!r}")
    return int(parts[0]), int(parts[1])


def _load(directory: str, role: str, need_tokenizer: bool):
    """(model, tokenizer or None) from a checkpoint directory, with one-line errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(directory):
        raise UsageError(f"{role} directory {directory!r} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a causal LM from {role} directory {directory!r}: {exc}") from None
    # transformers 5 builds an empty tokenizer for a directory without tokenizer files instead of failing
    if not any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        if need_tokenizer:
            raise UsageError(f"{role} directory {directory!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
        return model, None
    try:
        return model, AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot load the tokenizer of {role} directory {directory!r}: {exc}") from None


def _check_same_vocabulary(main, main_tok, other, other_tok, role: str, directory: str) -> None:
    """The second model must read and write the same token ids as the first."""
    if other_tok is not None and other_tok.get_vocab() != main_tok.get_vocab():
        raise UsageError(f"tokenizer mismatch: the {role} tokenizer in {directory!r} has a different vocabulary "
                         f"({len(other_tok)} tokens) from the model's ({len(main_tok)} tokens)")
    sizes = (main.get_output_embeddings().weight.shape[0], other.get_output_embeddings().weight.shape[0])
    if sizes[0] != sizes[1]:
        raise UsageError(f"tokenizer mismatch: the {role} model in {directory!r} has {sizes[1]} output tokens, "
                         f"the model has {sizes[0]}")


STACK_OPTIONS = ("order", "top_n_sigma", "eta", "xtc_probability", "xtc_threshold", "dynatemp_range",
                 "dynatemp_exponent", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
                 "mirostat_tau", "mirostat_eta")


def _stack_options(args) -> dict:
    """The stack sampler's keywords given on the command line (empty: the plain sampler). --typical-p and
    --epsilon join them when any is given."""
    opts = {name: getattr(args, name) for name in STACK_OPTIONS if getattr(args, name) is not None}
    if args.dry_sequence_breakers:
        try:
            opts["dry_sequence_breakers"] = [int(t) for t in args.dry_sequence_breakers.split(",")]
        except ValueError:
            raise UsageError(f"--dry-sequence-breakers must be comma-separated token ids, got "
                             f"{args.dry_sequence_breakers!r}") from None
    if args.mirostat == 2:
        opts["mirostat"] = True
    if opts:
        opts.update({k: v for k, v in (("typical_p", args.typical_p), ("epsilon", args.epsilon)) if v})
        if args.adaptive:
            raise UsageError("--adaptive cannot be combined with the stack sampler's options")
    return opts


def _run(args) -> None:
    from . import beam_search, contrastive_decode, greedy_decode, left_pad, sample_decode, speculative_decode
    from ..processors import EntropyAdaptiveSampler, EpsilonFilter, NoRepeatNGram, RepetitionPenalty, TypicalFilter

    second = {"speculative": ("draft", args.draft), "contrastive": ("amateur", args.amateur)}.get(args.strategy)
    if args.strategy == "speculative" and args.proposer == "ngram":
        if args.draft is not None:
            raise UsageError("--proposer ngram uses no draft model: drop --draft")
        second = None
    if second and second[1] is None:
        raise UsageError(f"--strategy {args.strategy} needs --{second[0]} DIR")
    model, tok = _load(args.model, "model", need_tokenizer=True)
    if second:
        other, other_tok = _load(second[1], second[0], need_tokenizer=False)
        _check_same_vocabulary(model, tok, other, other_tok, *second)

    eos = tok.eos_token_id if tok.eos_token_id is not None else model.generation_config.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
    encoded = [tok(text, add_special_tokens=False)["input_ids"] for text in args.prompt]
    if any(len(ids) == 0 for ids in encoded):
        raise UsageError("a prompt encodes to no tokens")
    ids, mask = left_pad(encoded, pad)
    common = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    procs = []
    if args.repetition_penalty:
        procs.append(RepetitionPenalty(args.repetition_penalty))
    if args.no_repeat_ngram_size:
        procs.append(NoRepeatNGram(args.no_repeat_ngram_size))
    beams = dict(length_penalty=args.length_penalty, num_return_sequences=args.num_return_sequences,
                 early_stopping={"true": True, "false": False}.get(args.early_stopping, args.early_stopping))
    stats = None
    with torch.no_grad():
        if args.strategy == "greedy":
            seqs = greedy_decode(model, ids, mask, processors=procs, **common)
        elif args.strategy == "sample" and _stack_options(args):
            seqs = sample_decode(model, ids, mask, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 min_p=args.min_p, processors=procs, stack=_stack_options(args), seed=args.seed,
                                 **common)
        elif args.strategy == "sample":
            warpers = ([TypicalFilter(args.typical_p)] if args.typical_p else []) + \
                      ([EpsilonFilter(args.epsilon)] if args.epsilon else [])
            adaptive = EntropyAdaptiveSampler(args.temperature, args.top_k, args.top_p, args.min_p) \
                if args.adaptive else None
            seqs = sample_decode(model, ids, mask, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 min_p=args.min_p, processors=procs, warpers=warpers, adaptive=adaptive,
                                 seed=args.seed, **common)
        elif args.strategy == "beam":
            seqs = beam_search(model, ids, mask, num_beams=args.num_beams or 4, processors=procs, **beams,
                               **common).sequences
        elif args.strategy == "contrastive":
            out = contrastive_decode(model, other, ids, mask, alpha=args.alpha, beta=args.beta,
                                     amateur_temperature=args.amateur_temperature, num_beams=args.num_beams or 1,
                                     **beams, **common)
            seqs = out if isinstance(out, torch.Tensor) else out.sequences
        else:
            out = speculative_decode(model, other if second else None, ids, mask, gamma=args.gamma,
                                     proposer=args.proposer, tree=args.tree, tree_mode=args.tree_mode,
                                     do_sample=args.sample,
                                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     seed=args.seed, **common)
            seqs, stats = out.sequences, out
    for row in seqs:
        print(tok.decode(row[row != pad] if pad is not None else row, skip_special_tokens=True))
    if stats is not None:
        print(f"acceptance rate {stats.acceptance_rate:.3f}, tokens per target forward "
              f"{stats.tokens_per_target_forward:.3f} ({stats.target_forwards} target forwards, "
              + (f"tree {args.tree[0]},{args.tree[1]}" if args.tree else f"gamma {args.gamma}")
              + f", proposer {args.proposer})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastsample generate``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad options (2)
        return int(exc.code or 0)
    try:
        _run(args)
    except (UsageError, ValueError) as exc:
        print(f"fastsample generate: error: {exc}", file=sys.stderr)
        return 2
    return 0
