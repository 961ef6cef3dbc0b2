"""greedy_decode == HF generate(do_sample=False), token for token: batched, left-padded, with EOS and processors."""
import pytest
import torch

from fastsample.decoding import greedy_decode
from fastsample.processors import NoRepeatNGram, RepetitionPenalty
from test_decoding_model import PAD, model, prompts  # noqa: F401  (model is a fixture)


def hf_greedy(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, **kwargs)


@torch.no_grad()
def test_matches_hf_without_eos(model):
    ids, mask = prompts()
    ref = hf_greedy(model, ids, mask, max_new_tokens=15, eos_token_id=None)
    assert torch.equal(greedy_decode(model, ids, mask, max_new_tokens=15), ref)


@torch.no_grad()
def test_matches_hf_with_eos(model):
    """EOS = a token one row emits mid-way: that row is padded afterwards, the others go on."""
    ids, mask = prompts()
    free = greedy_decode(model, ids, mask, max_new_tokens=15)
    eos = int(free[1, ids.shape[1] + 3])  # row 1's 4th new token
    ref = hf_greedy(model, ids, mask, max_new_tokens=15, eos_token_id=eos)
    out = greedy_decode(model, ids, mask, max_new_tokens=15, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(out, ref)
    assert (out[1, ids.shape[1] + 4:] == PAD).all()


@torch.no_grad()
def test_stops_when_every_row_ended(model):
    ids, mask = prompts()
    free = greedy_decode(model, ids, mask, max_new_tokens=20)
    eos = [int(free[r, ids.shape[1] + 1]) for r in range(3)]  # every row ends at its 2nd new token at latest
    ref = hf_greedy(model, ids, mask, max_new_tokens=20, eos_token_id=eos)
    out = greedy_decode(model, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=PAD)
    assert ref.shape[1] < ids.shape[1] + 20
    assert torch.equal(out, ref)


@pytest.mark.parametrize("penalty,ngram", [(1.5, None), (None, 2), (0.7, 3)])
@torch.no_grad()
def test_processors_match_hf(model, penalty, ngram):
    ids, mask = prompts()
    procs, kwargs = [], {}
    if penalty:
        procs.append(RepetitionPenalty(penalty))
        kwargs["repetition_penalty"] = penalty
    if ngram:
        procs.append(NoRepeatNGram(ngram))
        kwargs["no_repeat_ngram_size"] = ngram
    ref = hf_greedy(model, ids, mask, max_new_tokens=15, eos_token_id=None, **kwargs)
    out = greedy_decode(model, ids, mask, max_new_tokens=15, processors=procs)
    assert torch.equal(out, ref)
