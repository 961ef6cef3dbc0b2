"""Hugging Face drop-in: ``model.generate(..., custom_generate=fastsample.hf.generate)``.

transformers (5.x) prepares the inputs, the cache, the logits processors and the stopping criteria from the
``GenerationConfig`` and then hands them to a callable ``custom_generate`` to run the decoding loop. This module
is such a callable: the same loop as HF's greedy / multinomial-sampling loop, with token selection done by
fastsample's kernels.

What runs where, per step (HF's order throughout):

- processors before the sampling warpers (repetition penalty, n-gram blocking, bad words, min length, min new
  tokens, the caller's ``logits_processor``, ...): fastsample's own processor where it has one with exactly
  HF's semantics (``RepetitionPenalty``, ``NoRepeatNGram``), else HF's object as generate built it;
- the run of ``temperature -> top_k -> top_p -> min_p`` warpers (``filter_value=-inf``, ``min_tokens_to_keep=1``,
  the defaults generate uses) and the draw: one fused ``fastsample.sample`` call;
- warpers after that run (``typical_p``, ``epsilon_cutoff``, ``eta_cutoff``: fastsample's ``TypicalFilter`` /
  ``EpsilonFilter`` / ``EtaFilter``, the stack sampler's steps; watermarking and anything else: HF's) need the filtered logits, so when
  any is present the fused warpers are applied as masks by fastsample's kernels
  (``fastsample.processors.filter_logits``), those warpers run, and ``fastsample.sample`` draws from the result;
- greedy (``do_sample=False``): ``fastsample.greedy`` (argmax, lowest id on ties, as ``torch.argmax``).

Random numbers follow fastsample's rule (docs/design.md section 4): row b draws step t with Philox (seed_b, offset t).
``seed`` (an int s: seed_b = s + b; or an int64 tensor [B] after ``num_return_sequences`` expansion) is a
keyword of this callable that ``generate`` forwards to it: ``model.generate(..., custom_generate=generate,
seed=torch.tensor([...]))``. Without it one seed is drawn from ``generator`` (or torch's default generator),
so ``torch.manual_seed`` makes runs reproducible. The tokens are not HF's multinomial draws: sampled output
has the same distribution, not the same values.

Not supported here (ValueError): beam search (``num_beams > 1``, see ``fastsample.decoding.beam_search``) and
encoder-decoder models.
"""
from __future__ import annotations

import inspect
import math

import torch
from transformers.generation import logits_process as hf_lp
from transformers.generation.utils import GenerateDecoderOnlyOutput

from . import processors as fs_proc
from .decoding.model import decode_seeds
from .sampling import greedy, sample

Tensor = torch.Tensor

# HF warper class -> fastsample.sample keyword, in the order fastsample applies them (HF's order)
_FUSED = ((hf_lp.TemperatureLogitsWarper, "temperature"), (hf_lp.TopKLogitsWarper, "top_k"),
          (hf_lp.TopPLogitsWarper, "top_p"), (hf_lp.MinPLogitsWarper, "min_p"))


def _fused_slot(proc) -> int | None:
    """Position of ``proc`` in ``_FUSED`` when fastsample's fused filter does exactly what it does, else None."""
    for slot, (cls, _) in enumerate(_FUSED):
        if type(proc) is cls:  # a subclass may change the semantics: leave it to HF
            if getattr(proc, "filter_value", -math.inf) != -math.inf or getattr(proc, "min_tokens_to_keep", 1) != 1:
                return None
            return slot
    return None


class _RepetitionPenalty(fs_proc.RepetitionPenalty):
    """fastsample's repetition penalty with HF's ``prompt_ignore_length`` (left padding is not "seen"): ignored
    positions are replaced by the row's last token, which is always counted, so the seen set is unchanged."""

    def __init__(self, penalty: float, ignore: Tensor | int | None):
        super().__init__(penalty)
        self.ignore = ignore

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if isinstance(self.ignore, int):
            input_ids = input_ids[:, self.ignore:]
        elif isinstance(self.ignore, Tensor):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            ignored = positions[None, :] < self.ignore.to(input_ids.device)[:, None]
            input_ids = torch.where(ignored, input_ids[:, -1:], input_ids)
        return super().__call__(input_ids, scores)


def _own_processor(proc):
    """fastsample's processor with exactly the semantics of HF processor ``proc``, or ``proc`` itself."""
    kind = type(proc)
    if kind is hf_lp.RepetitionPenaltyLogitsProcessor and getattr(proc, "logits_indices", None) is None:
        return _RepetitionPenalty(proc.penalty, getattr(proc, "prompt_ignore_length", None))
    if kind is hf_lp.NoRepeatNGramLogitsProcessor:
        return fs_proc.NoRepeatNGram(proc.ngram_size)
    if getattr(proc, "filter_value", -math.inf) != -math.inf:
        return proc
    if kind is hf_lp.TypicalLogitsWarper:
        return fs_proc.TypicalFilter(proc.mass, proc.min_tokens_to_keep)
    if kind is hf_lp.EpsilonLogitsWarper:
        return fs_proc.EpsilonFilter(proc.epsilon, proc.min_tokens_to_keep)
    if kind is hf_lp.EtaLogitsWarper and getattr(proc, "min_tokens_to_keep", 1) == 1:
        return fs_proc.EtaFilter(float(proc.epsilon))
    return proc


class TokenSelector:
    """A prepared ``LogitsProcessorList`` split into (processors, fused warpers, later warpers), and the step
    that turns one step's raw logits into tokens (and, when asked, HF's processed scores)."""

    def __init__(self, logits_processor, do_sample: bool, seeds: Tensor | None, backend: str | None = None):
        procs = list(logits_processor or [])
        start = next((i for i, p in enumerate(procs) if do_sample and _fused_slot(p) is not None), len(procs))
        end, last_slot, fused = start, -1, {}
        while end < len(procs) and (slot := _fused_slot(procs[end])) is not None and slot > last_slot:
            cls_name = _FUSED[slot][1]
            fused[cls_name] = getattr(procs[end], cls_name)
            end, last_slot = end + 1, slot
        self.before = [_own_processor(p) for p in procs[:start]]
        self.fused = fused
        self.after = [_own_processor(p) for p in procs[end:]]
        self.do_sample, self.seeds, self.backend = do_sample, seeds, backend

    def __call__(self, input_ids: Tensor, logits: Tensor, step: int, want_scores: bool) -> tuple[Tensor, Tensor | None]:
        scores = logits
        for proc in self.before:
            scores = proc(input_ids, scores)
        if not self.do_sample:
            for proc in self.after:
                scores = proc(input_ids, scores)
            tokens = greedy(scores, backend=self.backend)
            # fastsample's -1 (a NaN or all -inf row) -> what torch.argmax, and so HF, returns there
            return torch.where(tokens >= 0, tokens, scores.argmax(-1)), scores
        if self.after:  # they need the filtered logits: the fused filters run as masks first
            scores = fs_proc.filter_logits(scores, **self.fused) if self.fused else scores
            for proc in self.after:
                scores = proc(input_ids, scores)
            tokens = sample(scores, seed=self.seeds, offset=step, backend=self.backend)
        else:
            tokens = sample(scores, **self.fused, seed=self.seeds, offset=step, backend=self.backend)
            if want_scores and self.fused:  # HF records the warped scores; the draw above did not need them
                scores = fs_proc.filter_logits(scores, **self.fused)
        if bool((tokens < 0).any()):  # one host read per step, as HF's stopping check does
            raise RuntimeError("a row's processed scores have no valid token (NaN, or every score -inf), the case "
                               "where torch.multinomial fails in plain generate")
        return tokens, scores


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _first_forward(model, input_ids: Tensor, generation_config, model_kwargs: dict):
    """The prefill; returns (outputs, model_kwargs)."""
    if hasattr(model, "_prefill"):  # transformers >= 5: handles a cache the caller passed in, chunked prefill
        return model._prefill(input_ids, generation_config, model_kwargs), model_kwargs
    # 4.5x: the loop itself starts the cache positions that prepare_inputs_for_generation slices with
    model_kwargs = model._get_initial_cache_position(input_ids.shape[1], input_ids.device, model_kwargs)
    return model(**model.prepare_inputs_for_generation(input_ids, **model_kwargs), return_dict=True), model_kwargs


def _next_forward(model, input_ids: Tensor, model_kwargs: dict):
    if _accepts(model.prepare_inputs_for_generation, "next_sequence_length"):
        inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **model_kwargs)
    else:  # older releases slice the new token off with cache_position
        inputs = model.prepare_inputs_for_generation(input_ids, **model_kwargs)
    return model(**inputs, return_dict=True)


def _callers_streamer():
    """The ``streamer`` given to ``generate``. transformers 5.24 hands a callable ``custom_generate`` only the
    keywords its signature adds to ``_sample``'s, so ``streamer`` (which generate already fed the prompt) never
    arrives; read it from generate's frame, the caller of this loop, so that streaming works unchanged."""
    caller = inspect.currentframe()
    while caller is not None and not (caller.f_code.co_name == "generate" and "custom_generate" in caller.f_locals):
        caller = caller.f_back
    streamer = caller.f_locals.get("streamer") if caller is not None else None
    return streamer if hasattr(streamer, "put") and hasattr(streamer, "end") else None


def _output(model_kwargs: dict, **fields) -> GenerateDecoderOnlyOutput:
    known = GenerateDecoderOnlyOutput.__dataclass_fields__
    for name in ("cache", "past_key_values"):  # the cache's name in this transformers release
        if name in known:
            fields[name] = model_kwargs.get(name)
            break
    return GenerateDecoderOnlyOutput(**{k: v for k, v in fields.items() if k in known})


@torch.no_grad()
def generate(model, input_ids: Tensor, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
             streamer=None, seed: int | Tensor | None = None, generator: torch.Generator | None = None,
             backend: str | None = None, **model_kwargs):
    """The decoding loop ``model.generate(..., custom_generate=fastsample.hf.generate)`` calls.

    Parameters
    ----------
    model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, model_kwargs :
        as ``generate`` passes them to its own ``_sample`` loop (the prompt already expanded for
        ``num_return_sequences``, left padding in ``attention_mask``).
    seed : int or int64 Tensor [B], optional; forwarded by ``generate``. Per-row Philox seeds (int s gives
        s + row); a row's sampled tokens then depend only on its seed, prompt and parameters.
    generator : torch.Generator, optional; draws the seed when ``seed`` is None.
    backend : fastsample backend to force ("cpu", "cuda", "triton", "torch"), default by device.

    Returns
    -------
    int64 Tensor [B, L] of sequences, or a ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate``
    (``scores``: the processed scores HF would record, ``logits``: the raw ones).
    """
    if model.config.is_encoder_decoder:
        raise ValueError("fastsample.hf.generate supports decoder-only models")
    if (generation_config.num_beams or 1) > 1:
        raise ValueError("fastsample.hf.generate runs greedy and sampling generation; for beam search use "
                         "fastsample.decoding.beam_search or plain generate")
    cfg = generation_config
    streamer = streamer if streamer is not None else _callers_streamer()
    want_dict = bool(cfg.return_dict_in_generate)
    scores = () if want_dict and cfg.output_scores else None
    raw_logits = () if want_dict and cfg.output_logits else None
    attentions = () if want_dict and cfg.output_attentions else None
    hidden_states = () if want_dict and cfg.output_hidden_states else None
    pad = cfg._pad_token_tensor
    pad = None if pad is None else pad.to(input_ids.device)
    has_eos = any(hasattr(c, "eos_token_id") for c in stopping_criteria)
    batch = input_ids.shape[0]
    seeds = decode_seeds(batch, seed, generator, input_ids.device) if cfg.do_sample else None
    select = TokenSelector(logits_processor, bool(cfg.do_sample), seeds, backend)
    unfinished = torch.ones(batch, dtype=torch.long, device=input_ids.device)

    outputs, model_kwargs = _first_forward(model, input_ids, cfg, model_kwargs)
    step = 0
    while True:
        model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder=False)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        tokens, processed = select(input_ids, logits, step, scores is not None)
        if scores is not None:
            scores += (processed,)
        if raw_logits is not None:
            raw_logits += (logits,)
        if attentions is not None:
            attentions += (outputs.attentions,)
        if hidden_states is not None:
            hidden_states += (outputs.hidden_states,)
        del outputs
        if has_eos:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(input_ids, scores)
        if unfinished.max() == 0:
            break
        step += 1
        outputs = _next_forward(model, input_ids, model_kwargs)

    if streamer is not None:
        streamer.end()
    if not want_dict:
        return input_ids
    return _output(model_kwargs, sequences=input_ids, scores=scores, logits=raw_logits, attentions=attentions,
                   hidden_states=hidden_states)
