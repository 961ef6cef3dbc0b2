"""beam_search == HF generate(num_beams=n): sequences and sequence scores."""
import pytest
import torch

from fastsample.decoding import beam_search
from fastsample.processors import NoRepeatNGram
from test_decoding_model import PAD, model, prompts  # noqa: F401  (model is a fixture)


def hf_beams(model, ids, mask, **kwargs):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD,
                             output_scores=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, out.sequences_scores


def eos_for(model, ids, mask):
    """EOS ids that beam search meets early: the 2nd and 4th tokens of each prompt's best plain beam, so that
    hypotheses end at different lengths (several EOS ids also widen HF's candidate list)."""
    seqs = beam_search(model, ids, mask, num_beams=3, max_new_tokens=6).sequences
    return sorted({int(t) for t in seqs[:, ids.shape[1] + 1]} | {int(seqs[0, ids.shape[1] + 3])})


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,num_return", [
    (2, 0.7, True, 1), (2, 1.0, False, 2), (3, 0.0, True, 1), (4, 2.0, "never", 3), (4, -0.5, False, 4),
    (5, 1.0, True, 2), (3, 1.5, "never", 1)])
@pytest.mark.parametrize("with_eos", [False, True])
@torch.no_grad()
def test_matches_hf(model, num_beams, length_penalty, early_stopping, num_return, with_eos):
    ids, mask = prompts()
    eos = eos_for(model, ids, mask) if with_eos else None
    kwargs = dict(num_beams=num_beams, max_new_tokens=10, length_penalty=length_penalty,
                  early_stopping=early_stopping, num_return_sequences=num_return, eos_token_id=eos)
    ref_seq, ref_scores = hf_beams(model, ids, mask, **kwargs)
    out = beam_search(model, ids, mask, pad_token_id=PAD, **kwargs)
    assert torch.equal(out.sequences, ref_seq)
    torch.testing.assert_close(out.sequences_scores, ref_scores, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_hypotheses_end_on_eos(model):
    """Without length normalisation short finished hypotheses win: the EOS path is really taken."""
    ids, mask = prompts()
    eos = eos_for(model, ids, mask)
    kwargs = dict(num_beams=4, max_new_tokens=10, length_penalty=0.0, num_return_sequences=4, eos_token_id=eos)
    ref_seq, ref_scores = hf_beams(model, ids, mask, **kwargs)
    out = beam_search(model, ids, mask, pad_token_id=PAD, **kwargs)
    assert torch.equal(out.sequences, ref_seq)
    torch.testing.assert_close(out.sequences_scores, ref_scores, atol=1e-5, rtol=1e-5)
    ended = torch.isin(out.sequences[:, ids.shape[1]:], torch.tensor(eos)).any(1)
    assert ended.any() and (out.sequences[ended, -1] == PAD).any()


@torch.no_grad()
def test_processors_match_hf(model):
    ids, mask = prompts()
    ref_seq, ref_scores = hf_beams(model, ids, mask, num_beams=3, max_new_tokens=10, no_repeat_ngram_size=2,
                                   eos_token_id=None)
    out = beam_search(model, ids, mask, num_beams=3, max_new_tokens=10, processors=[NoRepeatNGram(2)])
    assert torch.equal(out.sequences, ref_seq)
    torch.testing.assert_close(out.sequences_scores, ref_scores, atol=1e-5, rtol=1e-5)


def test_arguments_checked(model):
    ids, mask = prompts()
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(model, ids, mask, num_beams=2, max_new_tokens=3, early_stopping="sometimes")
    with pytest.raises(ValueError, match="num_return_sequences"):
        beam_search(model, ids, mask, num_beams=2, max_new_tokens=3, num_return_sequences=3)
