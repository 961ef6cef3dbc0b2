"""The decoders' model protocol (fastsample/decoding/model.py): KV-cache reuse, crop, holes, left padding.

Also home of the tiny randomly initialised models the other decoder tests import (no downloads).
"""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fastsample.decoding.model import Session, crop, decode_loop, left_pad

VOCAB = 1000
PAD = 1


def tiny_gpt2(seed=0, vocab=VOCAB, layers=2, init=0.2):
    """GPT-2 with 2 layers, hidden 32, vocab 1000. A wide init makes the next-token distributions peaked
    enough that greedy choices are far from ties."""
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=layers, n_head=2, initializer_range=init,
                     bos_token_id=0, eos_token_id=2, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(seed=0, vocab=VOCAB, layers=2, init=0.2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      initializer_range=init, bos_token_id=0, eos_token_id=2, pad_token_id=PAD)
    return LlamaForCausalLM(cfg).eval()


def truncated_draft(target: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A 1-layer draft sharing the target's embeddings, first block and final norm: a cheap, related model."""
    draft = GPT2LMHeadModel(GPT2Config(**{**target.config.to_dict(), "n_layer": 1})).eval()
    draft.load_state_dict(target.state_dict(), strict=False)
    return draft


def prompts(pad=PAD):
    """Three left-padded prompts of lengths 5, 2 and 3."""
    return left_pad([[5, 6, 7, 8, 9], [11, 12], [400, 3, 4]], pad_token_id=pad)


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def full_logits(model, ids, mask):
    """No-cache reference: one forward over the whole padded sequence, positions counting unmasked tokens."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()


def test_left_pad():
    ids, mask = left_pad([[3, 4, 5], [7]], pad_token_id=9)
    assert ids.tolist() == [[3, 4, 5], [9, 9, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        left_pad([[1], []], pad_token_id=0)


@torch.no_grad()
def test_cache_reuse_matches_full_forward(model):
    ids, mask = prompts()
    more = torch.tensor([[20, 21, 22]] * 3)
    s = Session(model)
    s(ids, mask)
    step_logits = torch.cat([s(more[:, i:i + 1]) for i in range(3)], dim=1)
    ref = full_logits(model, torch.cat([ids, more], 1), torch.cat([mask, torch.ones_like(more)], 1))[:, -3:]
    torch.testing.assert_close(step_logits, ref, atol=1e-4, rtol=1e-4)
    assert s.length == ids.shape[1] + 3


@torch.no_grad()
def test_crop_rolls_back(model):
    ids, mask = prompts()
    s = Session(model)
    s(ids, mask)
    first = s(torch.tensor([[30], [31], [32]]))
    s(torch.tensor([[40, 41], [42, 43], [44, 45]]))
    s.crop(ids.shape[1])
    again = s(torch.tensor([[30], [31], [32]]))
    torch.testing.assert_close(again, first, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_holes_are_invisible(model):
    """A masked column in the middle of the cache (a rejected draft token) changes nothing for later tokens."""
    ids, mask = prompts()
    s = Session(model)
    s(ids, mask)
    s(torch.tensor([[50, 51], [52, 53], [54, 55]]))
    s.mask[:, -1] = torch.tensor([0, 1, 0])  # rows 0 and 2 rejected their second token
    got = s(torch.tensor([[60], [61], [62]]))[:, -1]
    for row, kept in enumerate([[50], [52, 53], [54]]):
        seq = torch.tensor(ids[row][mask[row].bool()].tolist() + kept + [60 + row])[None]
        ref = full_logits(model, seq, torch.ones_like(seq))[:, -1]
        torch.testing.assert_close(got[row:row + 1], ref, atol=1e-4, rtol=1e-4)


def test_callable_protocol_with_legacy_cache():
    """Any callable with input_ids / past_key_values / use_cache works, with a tuple-of-(k, v) cache."""
    table = torch.randn(50, 50)

    class Out:
        def __init__(self, logits, past):
            self.logits, self.past_key_values = logits, past

    def bigram(input_ids, past_key_values=None, use_cache=True):
        old = past_key_values[0][0] if past_key_values else torch.zeros(input_ids.shape[0], 1, 0, 1)
        keys = torch.cat([old, input_ids[:, None, :, None].float()], dim=2)
        return Out(table[input_ids], ((keys, keys),))

    ids = torch.tensor([[3, 4], [5, 6]])
    out = decode_loop([bigram], ids, None, 4, lambda step, seqs, logits: logits[0].argmax(-1))
    expect = ids.tolist()
    for row in expect:
        for _ in range(4):
            row.append(int(table[row[-1]].argmax()))
    assert out.tolist() == expect
    past = ((torch.zeros(2, 1, 6, 1),) * 2,)
    assert crop(past, 4)[0][0].shape[2] == 4
