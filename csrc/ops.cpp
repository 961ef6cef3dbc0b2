// The one schema list of the fastsample ops. Every backend (csrc/cpu, csrc/cuda, fastsample/triton,
// fastsample/reference.py) implements exactly these, with the semantics of docs/design.md section 5.
//
// Per-row parameters come as (Tensor? <name>_arr, scalar <name>_val): the tensor, when given, is [B]
// (float32 for temperature/top_p/min_p, int64 for top_k) on the input's device and wins over the scalar.
// seed and offset are int64 [B] on the input's device (fastsample/_rng.py builds them).
#include <Python.h>
#include <torch/library.h>

// Lets `import fastsample._C` load the library that registers the ops.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(fastsample, m) {
  // float32 probs = softmax(logits / T); T == 0 -> uniform over the row's maxima; T < 0 or NaN -> NaN row.
  m.def("softmax(Tensor logits, Tensor? temperature_arr, float temperature_val) -> Tensor");
  // torch.topk(largest=True) with ties to the lower index and NaN largest; values keep x's dtype.
  m.def("top_k(Tensor x, int k, bool sorted) -> (Tensor values, Tensor indices)");
  // logits with every token below the row's k-th largest value set to -inf (k <= 0 or k >= V: unchanged).
  m.def("top_k_mask_logits(Tensor logits, Tensor? top_k_arr, int top_k_val) -> Tensor");
  // probs renormalised over the tokens kept by top-k -> top-p -> min-p; an invalid row comes back all zeros.
  m.def(
      "renorm_probs(Tensor probs, Tensor? top_k_arr, int top_k_val, Tensor? top_p_arr, float top_p_val, "
      "Tensor? min_p_arr, float min_p_val) -> Tensor");
  // One token per row from logits (is_logits) or probs, after temperature -> top-k -> top-p -> min-p;
  // -1 for a row with no valid token. logprobs: float32 [B] (empty [0] unless return_logprobs), NaN on -1 rows.
  m.def(
      "sample(Tensor x, bool is_logits, Tensor? temperature_arr, float temperature_val, Tensor? top_k_arr, "
      "int top_k_val, Tensor? top_p_arr, float top_p_val, Tensor? min_p_arr, float min_p_val, Tensor seed, "
      "Tensor offset, bool return_logprobs) -> (Tensor tokens, Tensor logprobs)");
  // Output i inverts CDF row group[i] ([G, V] float64 prefix sums of kept weights) with Philox draw 0 of
  // (seed, offset + offset_step * i); -1 where the row total is not finite and positive (fastsample/indexed.py).
  m.def("draw_from_cdfs(Tensor cdf, Tensor group, Tensor seed, Tensor offset, int offset_step) -> Tensor");
  // log(sum(exp(logits))) per row in one online pass: the single-pass limit of the benchmarks.
  m.def("logsumexp(Tensor logits) -> Tensor");
  // Speculative acceptance (docs/design.md section 5): output [B, n+1] padded with -1, accepted_num [B], emitted_num [B].
  m.def(
      "chain_speculative_sampling(Tensor draft_probs, Tensor draft_token_ids, Tensor target_probs, "
      "Tensor seed, Tensor offset) -> (Tensor output_token_ids, Tensor accepted_num, Tensor emitted_num)");
  // Tree verification (docs/ops.md "tree_speculative_sampling"): node tokens and parents [B, N] int64, target
  // rows [B, N+1, V], draft rows [B, N, V] (sampled children) or none (deterministic children). Output [B, N+1]
  // (path, then the drawn token, -1 padding), accepted_nodes [B, N] (-1 padding), emitted_num [B].
  m.def(
      "tree_speculative_sampling(Tensor draft_token_ids, Tensor parents, Tensor target_probs, Tensor? draft_probs, "
      "Tensor seed, Tensor offset) -> (Tensor output_token_ids, Tensor accepted_nodes, Tensor emitted_num)");
  // The stack sampler (docs/ops.md "sample_stack"): mask -> bias -> penalties -> temperature -> filters (top-n-sigma,
  // then HF or vLLM v1 order) -> num_samples draws -> logprobs (mode 0 none, 1 processed, 2 raw), ranks and top-N.
  // tokens [B, n]; logprobs/ranks [B, n] ([0, n] in mode 0); top_ids/top_logprobs [B, top_n]. Its parameters and
  // stack_processed_logits' are fastsample/stack/spec.py's, which every Python layer passes on (a test checks).
  m.def(
      "sample_stack(Tensor logits, Tensor? allowed_mask, Tensor? bias_ids, Tensor? bias_values, "
      "Tensor? prompt_ids, Tensor? output_ids, Tensor? repetition_arr, float repetition_val, "
      "Tensor? frequency_arr, float frequency_val, Tensor? presence_arr, float presence_val, "
      "Tensor? temperature_arr, float temperature_val, Tensor? top_k_arr, int top_k_val, Tensor? top_p_arr, "
      "float top_p_val, Tensor? min_p_arr, float min_p_val, bool vllm_order, int num_samples, Tensor seed, "
      "Tensor offset, int logprobs_mode, int top_n, Tensor? top_n_sigma_arr=None, float top_n_sigma_val=-1.) -> "
      "(Tensor tokens, Tensor logprobs, Tensor ranks, Tensor top_ids, Tensor top_logprobs)");
  // Steps 1-3 of sample_stack (mask -> bias -> penalties) as processed float32 logits [B, V], and bool [B]: rows
  // that are invalid whatever follows (an id outside [-1, V), a NaN logit, a penalty out of range). The CUDA
  // route of sample_stack (fastsample/stack/cuda.py) composes it with `sample`; its CPU kernel lets that route
  // be tested without a GPU (the CPU sampler itself is fused and never builds this copy).
  m.def(
      "stack_processed_logits(Tensor logits, Tensor? allowed_mask, Tensor? bias_ids, Tensor? bias_values, "
      "Tensor? prompt_ids, Tensor? output_ids, Tensor? repetition_arr, float repetition_val, "
      "Tensor? frequency_arr, float frequency_val, Tensor? presence_arr, float presence_val) -> "
      "(Tensor processed, Tensor bad)");
  // The filter chain of the stack sampler's long-tail route (docs/ops.md "Long-tail steps"; CPU only: other
  // devices run fastsample/stack/tail.py's torch ops): float32 processed logits y [B, V] (after DRY), per-row
  // parameters [B], the step codes to run in order (tail.CPU_STEP_CODES), mirostat's mu or None ->
  // (z float64 [B, V] with dropped tokens -inf, greedy bool [B]); with uniforms u float32 [B, n] also the draws
  // (tokens int64 [B, n], p_token float64 [B] = the kept probability of draw 0), and dense=False leaves z empty
  // [0, V] (no pass over V after the first filters); dry_ids/dry_penalty (stack_tail_dry's list) are subtracted
  // from y first, in float32; finite bool [B] = the row (after DRY) has a value > -inf. seed/offset int64 [B]
  // instead of u: the op draws the Philox uniforms itself (num_draws of them, and XTC's: u_xtc is ignored).
  m.def(
      "stack_tail_filters(Tensor y, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
      "Tensor top_n_sigma, Tensor typical_p, Tensor epsilon, Tensor eta, Tensor xtc_probability, "
      "Tensor xtc_threshold, Tensor u_xtc, Tensor dynatemp_range, Tensor dynatemp_exponent, Tensor? mirostat_mu, "
      "int[] steps, Tensor? u=None, bool dense=True, Tensor? dry_ids=None, Tensor? dry_penalty=None, "
      "Tensor? seed=None, Tensor? offset=None, int num_draws=0) -> "
      "(Tensor z, Tensor greedy, Tensor tokens, Tensor p_token, Tensor finite)");
  // DRY's override list (CPU only; fastsample/stack/tail.py `dry` is the torch twin): right-aligned history h
  // int64 [B, L], per-row parameters [B], breakers int64 [B or 1, Lb] or None, the vocabulary size ->
  // (ids int64 [B, L], penalty float32 [B, L]) for y.scatter_add(1, ids, -penalty).
  m.def(
      "stack_tail_dry(Tensor h, Tensor multiplier, Tensor base, Tensor allowed_length, Tensor penalty_last_n, "
      "Tensor? breakers, int vocab) -> (Tensor ids, Tensor penalty)");
  // Per-rank passes of vocab-parallel sampling (fastsample/distributed; rules in csrc/cpu/distributed.cpp, torch
  // reference fastsample/distributed/_local.py). Row parameters are [B] tensors; nothing is read on the host.
  m.def("dist_row_stats(Tensor x, Tensor tie_value) -> Tensor");
  m.def(
      "dist_weigh(Tensor x, Tensor m, Tensor t, Tensor mode, Tensor theta, Tensor log_min_p, Tensor per_nat, "
      "int scale, bool store_q) -> (Tensor q, Tensor hist, Tensor kept)");
  m.def(
      "dist_digit_hist(Tensor x, Tensor q, Tensor m, Tensor per_nat, Tensor chosen, Tensor prefix, int shift) "
      "-> Tensor");
  m.def("dist_kept(Tensor x, Tensor q, Tensor theta) -> Tensor");
  m.def(
      "dist_walk(Tensor x, Tensor? q, Tensor m, Tensor t, Tensor mode, Tensor theta, Tensor log_min_p, "
      "Tensor target, int scale) -> Tensor");
}

