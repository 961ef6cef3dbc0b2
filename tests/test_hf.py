"""fastsample.hf.generate as transformers' custom_generate: greedy equals plain generate token for token, sampling
follows the distribution of HF's own processed scores (chi-square), seeds reproduce, outputs and streamers as
generate's. Tiny random models built here: Llama and GPT-2, batches with left padding."""
import pytest
import torch
from conftest import chi_square_pvalue

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.generation import LogitsProcessor, StoppingCriteria  # noqa: E402

from fastsample import hf  # noqa: E402

VOCAB = 64


def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=None)
    return LlamaForCausalLM(config).eval()


def gpt2():
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, pad_token_id=0,
                        bos_token_id=1, eos_token_id=None)
    return GPT2LMHeadModel(config).eval()


MODELS = {"llama": llama, "gpt2": gpt2}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def prompts():
    """Three left-padded prompts of lengths 5, 2 and 4 (pad id 0)."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 0, 12, 13], [0, 20, 21, 22, 23]])
    return ids, (ids != 0).long()


def both(model, **kwargs):
    """(plain generate, generate with fastsample's loop) on the same arguments."""
    ids, mask = prompts()
    plain = model.generate(ids, attention_mask=mask, **kwargs)
    ours = model.generate(ids, attention_mask=mask, custom_generate=hf.generate, **kwargs)
    return plain, ours


class AddBias(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores + torch.linspace(0, 3, scores.shape[1])


class StopAfterToken(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


GREEDY_CASES = {
    "plain": {},
    "penalties": {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
    "bad_words_min_new": {"bad_words_ids": [[9], [30, 31]], "min_new_tokens": 4},
    "user_processor": {"logits_processor": [AddBias()]},
}


@pytest.mark.parametrize("case", sorted(GREEDY_CASES))
def test_greedy_equals_generate(model, case):
    plain, ours = both(model, do_sample=False, max_new_tokens=12, **GREEDY_CASES[case])
    assert torch.equal(plain, ours)


def test_greedy_eos_and_stopping_criteria(model):
    first, _ = both(model, do_sample=False, max_new_tokens=10)
    eos = int(first[1, 5 + 2])  # row 1 emits it at step 2: that row finishes early, the others go on
    plain, ours = both(model, do_sample=False, max_new_tokens=10, eos_token_id=eos)
    assert torch.equal(plain, ours)
    gen = ours[1, 5:].tolist()
    assert (ours[1, 5 + gen.index(eos) + 1:] == 0).all()  # padded after its first EOS
    stop = int(first[0, 5 + 4])
    plain, ours = both(model, do_sample=False, max_new_tokens=10, stopping_criteria=[StopAfterToken(stop)])
    assert torch.equal(plain, ours)


def test_greedy_dict_outputs(model):
    kwargs = dict(do_sample=False, max_new_tokens=6, return_dict_in_generate=True, output_scores=True,
                  output_logits=True, repetition_penalty=1.2)
    plain, ours = both(model, **kwargs)
    assert torch.equal(plain.sequences, ours.sequences)
    assert len(ours.scores) == len(plain.scores) == len(ours.logits) == 6
    for a, b in zip(plain.scores + plain.logits, ours.scores + ours.logits):
        torch.testing.assert_close(a, b)


SAMPLE_CASES = {
    "fused": {"temperature": 0.7, "top_k": 20, "top_p": 0.8, "min_p": 0.02},
    "fused_penalty": {"temperature": 1.3, "top_p": 0.9, "repetition_penalty": 1.4},
    "typical_epsilon": {"temperature": 0.9, "top_k": 30, "typical_p": 0.9, "epsilon_cutoff": 3e-3},
    "eta": {"top_p": 0.95, "eta_cutoff": 1e-3},
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sampling_distribution(model, case):
    """The first sampled token of each prompt, drawn 3000 times, against softmax of the scores plain generate
    records for it (HF's processors and warpers): chi-square, and never a token HF's warpers drop."""
    kwargs = dict(do_sample=True, max_new_tokens=1, **SAMPLE_CASES[case])
    ids, mask = prompts()
    ref = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **kwargs)
    expected = torch.softmax(ref.scores[0].double(), dim=-1)
    draws = 3000
    rep_ids, rep_mask = ids.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0)
    out = model.generate(rep_ids, attention_mask=rep_mask, custom_generate=hf.generate, seed=1234, **kwargs)
    tokens = out[:, -1].view(3, draws)
    for row in range(3):
        assert chi_square_pvalue(tokens[row], expected[row].numpy()) > 1e-4


def test_sampling_scores_match_hf(model):
    """Step 0 sees the same logits in both loops, so the processed scores HF records must agree."""
    kwargs = dict(do_sample=True, max_new_tokens=1, return_dict_in_generate=True, output_scores=True,
                  temperature=0.7, top_k=25, top_p=0.9)
    plain, ours = both(model, **kwargs)
    assert torch.equal(torch.isinf(plain.scores[0]), torch.isinf(ours.scores[0]))
    torch.testing.assert_close(plain.scores[0], ours.scores[0])


def test_seeds_reproduce(model):
    ids, mask = prompts()
    kwargs = dict(do_sample=True, max_new_tokens=8, top_p=0.9, custom_generate=hf.generate, attention_mask=mask)
    seeds = torch.tensor([11, 22, 33])
    a = model.generate(ids, seed=seeds, **kwargs)
    b = model.generate(ids, seed=seeds.clone(), **kwargs)
    assert torch.equal(a, b)
    c = model.generate(ids, seed=torch.tensor([11, 99, 33]), **kwargs)
    assert torch.equal(a[0], c[0]) and torch.equal(a[2], c[2])  # a row depends only on its own seed
    assert not torch.equal(a[1], c[1])
    torch.manual_seed(5)
    d = model.generate(ids, **kwargs)
    torch.manual_seed(5)
    assert torch.equal(d, model.generate(ids, **kwargs))


def test_num_return_sequences(model):
    ids, mask = prompts()
    out = model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=6, num_return_sequences=4,
                         custom_generate=hf.generate, seed=7)
    assert out.shape == (12, 11)
    assert torch.equal(out[:, :5], ids.repeat_interleave(4, 0))
    assert len({tuple(r) for r in out[:4, 5:].tolist()}) > 1  # the copies of a prompt draw differently


def test_streamer_sees_every_token(model):
    class Recorder:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.ended = True

    ids, mask = prompts()
    rec = Recorder()
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=5, streamer=rec,
                         custom_generate=hf.generate)
    assert rec.ended and len(rec.chunks) == 6
    assert torch.equal(torch.stack(rec.chunks[1:], dim=1), out[:, 5:])


def test_beam_search_rejected(model):
    ids, mask = prompts()
    with pytest.raises(ValueError, match="beam"):
        model.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=3, custom_generate=hf.generate)


def test_selector_fuses_hf_warpers():
    """The warpers generate builds for a sampling config land in the fused call, typical after them."""
    from transformers.generation import LogitsProcessorList
    from transformers.generation import logits_process as lp

    procs = LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.2), lp.TemperatureLogitsWarper(0.5),
                                 lp.TopKLogitsWarper(10), lp.TopPLogitsWarper(0.9), lp.TypicalLogitsWarper(0.8)])
    sel = hf.TokenSelector(procs, True, torch.zeros(1, dtype=torch.int64))
    assert sel.fused == {"temperature": 0.5, "top_k": 10, "top_p": 0.9}
    assert [type(p).__name__ for p in sel.after] == ["TypicalFilter"]
