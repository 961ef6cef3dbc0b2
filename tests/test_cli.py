"""`python -m fastsample generate` end to end on tiny models and a word-level tokenizer saved to a temp dir."""
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import fastsample
from fastsample.__main__ import main as fastsample_cli
from fastsample.decoding import greedy_decode
from fastsample.decoding.cli import main
from test_decoding_model import VOCAB, tiny_gpt2, truncated_draft


def word_tokenizer(vocab=VOCAB, shift=0):
    words = ["<unk>", "<pad>", "<eos>"] + [f"w{i + shift}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    target = tiny_gpt2(init=0.5)
    paths = {}
    for name, model, tok in [("target", target, word_tokenizer()), ("draft", truncated_draft(target), None),
                             ("amateur", tiny_gpt2(seed=3, layers=1), word_tokenizer()),
                             ("other_vocab", tiny_gpt2(seed=4), word_tokenizer(shift=1))]:
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
        if tok is not None:
            tok.save_pretrained(paths[name])
    paths["model"] = target
    return paths


PROMPT = "w5 w6 w7 w8"


def test_greedy_prints_the_continuation(dirs, capsys):
    assert main(["--model", dirs["target"], "--prompt", PROMPT, "--max-new-tokens", "6"]) == 0
    ids = torch.tensor([[8, 9, 10, 11]])  # w5..w8: words start at id 3
    new = greedy_decode(dirs["model"], ids, max_new_tokens=6, eos_token_id=2, pad_token_id=1)[0, 4:]
    expect = " ".join([PROMPT] + [f"w{t - 3}" for t in new.tolist() if t > 2])
    assert capsys.readouterr().out.strip() == expect


@pytest.mark.parametrize("extra", [
    ["--strategy", "sample", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "3"],
    ["--strategy", "sample", "--typical-p", "0.9", "--repetition-penalty", "1.2", "--adaptive"],
    ["--strategy", "beam", "--num-beams", "3", "--num-return-sequences", "2", "--early-stopping", "never"],
    ["--strategy", "contrastive", "--amateur", "AMATEUR", "--alpha", "0.2"],
    ["--strategy", "contrastive", "--amateur", "AMATEUR", "--beta", "0.5", "--num-beams", "2"],
])
def test_strategies(dirs, capsys, extra):
    extra = [dirs["amateur"] if a == "AMATEUR" else a for a in extra]
    assert main(["--model", dirs["target"], "--prompt", PROMPT, "--prompt", "w9", "--max-new-tokens", "5"]
                + extra) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n_return = 2 if "--num-return-sequences" in extra else 1
    assert len(lines) == 2 * n_return
    assert lines[0].startswith(PROMPT) and lines[-1].startswith("w9")
    assert all(len(line.split()) > len(PROMPT.split()) - 3 for line in lines)


def test_speculative_prints_statistics(dirs, capsys):
    args = ["--model", dirs["target"], "--prompt", PROMPT, "--max-new-tokens", "8"]
    assert main(args) == 0
    greedy_text = capsys.readouterr().out.strip()
    assert main(args + ["--strategy", "speculative", "--draft", dirs["draft"], "--gamma", "3"]) == 0
    text, stats = capsys.readouterr().out.strip().splitlines()
    assert text == greedy_text
    assert stats.startswith("acceptance rate ") and "tokens per target forward" in stats


@pytest.mark.parametrize("extra", [["--draft", "DRAFT", "--tree", "3,2"], ["--proposer", "ngram", "--gamma", "3"],
                                   ["--proposer", "ngram", "--tree", "2,2", "--sample"],
                                   ["--draft", "DRAFT", "--tree", "2,2", "--tree-mode", "sample", "--sample"]])
def test_speculative_trees(dirs, capsys, extra):
    args = ["--model", dirs["target"], "--prompt", PROMPT + " w5 w6", "--max-new-tokens", "8"]
    assert main(args) == 0
    greedy_text = capsys.readouterr().out.strip()
    extra = [dirs["draft"] if a == "DRAFT" else a for a in extra]
    assert main(args + ["--strategy", "speculative"] + extra) == 0
    text, stats = capsys.readouterr().out.strip().splitlines()
    assert text == greedy_text or "--sample" in extra
    assert text.startswith(PROMPT) and "tokens per target forward" in stats
    assert ("tree 2,2" in stats or "tree 3,2" in stats) == ("--tree" in extra)


def test_errors(dirs, capsys, tmp_path):
    missing = str(tmp_path / "nope")
    assert main(["--model", missing, "--prompt", "w1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model", dirs["target"], "--prompt", "w1", "--strategy", "speculative"]) == 2
    assert "needs --draft" in capsys.readouterr().err
    assert main(["--model", dirs["target"], "--prompt", "w1", "--strategy", "speculative", "--proposer", "ngram",
                 "--draft", dirs["draft"]]) == 2
    assert "drop --draft" in capsys.readouterr().err
    assert main(["--model", dirs["target"], "--prompt", "w1", "--strategy", "speculative", "--tree", "3"]) == 2
    assert "DEPTH,BRANCHING" in capsys.readouterr().err
    assert main(["--model", dirs["target"], "--prompt", "w1", "--strategy", "contrastive",
                 "--amateur", dirs["other_vocab"]]) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err
    assert main(["--model", dirs["draft"], "--prompt", "w1"]) == 2  # no tokenizer saved there
    assert "tokenizer" in capsys.readouterr().err
    assert main(["--model", dirs["target"], "--prompt", "w1", "--strategy", "nonsense"]) == 2


def test_module_entry_point(dirs, tmp_path):
    """`python -m fastsample generate` in a fresh process, run outside the repository so that it imports the
    same fastsample as this test (the installed one), not whatever the working directory holds."""
    package_parent = os.path.dirname(os.path.dirname(fastsample.__file__))
    env = {**os.environ, "PYTHONPATH": package_parent + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "fastsample", "generate", "--model", dirs["target"], "--prompt",
                          PROMPT, "--max-new-tokens", "3"], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(PROMPT)


def test_bench_is_not_part_of_the_package(capsys):
    """The package never imports the repository's bench/: `python -m fastsample bench` says where it went."""
    assert fastsample_cli(["bench", "--full"]) == 2
    assert "python -m bench" in capsys.readouterr().err


@pytest.mark.parametrize("extra,stack", [
    (["--order", "llama.cpp", "--top-k", "20", "--typical-p", "0.9", "--xtc-probability", "0.5",
      "--xtc-threshold", "0.05", "--dynatemp-range", "0.4", "--dry-multiplier", "0.8", "--dry-allowed-length", "1",
      "--dry-sequence-breakers", "3,4"],
     dict(order="llama.cpp", typical_p=0.9, xtc_probability=0.5, xtc_threshold=0.05, dynatemp_range=0.4,
          dry_multiplier=0.8, dry_allowed_length=1, dry_sequence_breakers=[3, 4])),
    (["--mirostat", "2", "--mirostat-tau", "3.0", "--eta", "0.001", "--top-n-sigma", "2.0"],
     dict(mirostat=True, mirostat_tau=3.0, eta=0.001, top_n_sigma=2.0)),
])
def test_stack_sampler_options(dirs, capsys, extra, stack):
    """The stack sampler's long-tail options print what sample_decode(stack=...) generates."""
    from fastsample.decoding import sample_decode

    assert main(["--model", dirs["target"], "--prompt", PROMPT, "--strategy", "sample", "--max-new-tokens", "8",
                 "--seed", "5"] + extra) == 0
    ids = torch.tensor([[8, 9, 10, 11]])
    top_k = 20 if "--top-k" in extra else 0
    new = sample_decode(dirs["model"], ids, max_new_tokens=8, top_k=top_k, stack=stack, seed=5, eos_token_id=2,
                        pad_token_id=1)[0, 4:]
    expect = " ".join([PROMPT] + [f"w{t - 3}" for t in new.tolist() if t > 2])
    assert capsys.readouterr().out.strip() == expect


def test_stack_sampler_option_errors(dirs, capsys):
    assert main(["--model", dirs["target"], "--prompt", PROMPT, "--strategy", "sample",
                 "--dry-multiplier", "1", "--dry-sequence-breakers", "a,b"]) == 2
    assert "--dry-sequence-breakers" in capsys.readouterr().err
