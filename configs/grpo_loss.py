"""The GRPO objective's section of a config: every number and choice `affect_jax/rl/losses.py` uses.

Other configs attach it: `c.grpo_loss = grpo_loss.get_grpo_loss_config()`, and the step reads it
with `losses.GrpoLossConfig.from_config(c.grpo_loss)`, which validates every field.
Defaults follow the settings seen in AffectGPT-R1 reimplementations (PAPER_NOTES.md section 3):
G = 8, beta = 0.04, clip epsilon 0.2, max completion 1024, advantage (r - mean_g) / (std_g + eps).
"""
import ml_collections

from configs import overrides as overrides_lib


def get_grpo_loss_config(**overrides) -> ml_collections.ConfigDict:
  """The GRPO loss section; keyword arguments override fields (e.g. `beta=0.0`)."""
  c = ml_collections.ConfigDict()
  # Completions per prompt; rows of a batch are grouped consecutively (p0 g0..g{G-1}, p1 ...).
  c.num_generations = 8
  # Weight of the per-token KL to the reference policy; 0 drops the reference forward pass.
  c.beta = 0.04
  c.kl_estimator = "k3"              # 'k1' | 'k2' | 'k3' (k3: exp(ref-lp) - (ref-lp) - 1)
  # PPO clip range [1 - epsilon_low, 1 + epsilon_high]; DAPO's clip-higher uses 0.28 above.
  c.epsilon_low = 0.2
  c.epsilon_high = 0.2
  # Advantage: 'group' (r - mean_g) / (std_g + eps); 'batch' (r - mean_g) / (std_batch + eps);
  # 'none' r - mean_g (Dr. GRPO); 'rloo' r_i - mean_{j != i} r_j (leave-one-out in the group).
  c.advantage_scale = "group"
  c.advantage_eps = 1e-4
  # Degrees of freedom of the std: 1 = unbiased (torch.std, as TRL's GRPOTrainer), 0 = population.
  c.std_ddof = 1
  # 'sequence_mean_token_mean' (original GRPO): mean over a sequence's tokens, then over
  # sequences; 'token_mean' (DAPO): sum over all tokens / number of tokens;
  # 'constant_normalizer' (Dr. GRPO): sum over all tokens / (sequences * normalizer_constant).
  c.loss_aggregation = "sequence_mean_token_mean"
  c.normalizer_constant = 1024.0     # Dr. GRPO: the max completion length
  # Policy updates per rollout batch; 1 makes the old policy = stop_gradient(current policy).
  c.num_iterations = 1
  # Completion positions per log-softmax chunk (bounds the [B, chunk, vocab] logits in memory).
  c.logprob_chunk = 256
  # Micro-batches of the rollout batch per gradient (lax.scan, gradients summed exactly).
  c.micro_batches = 1
  # Policy loss: 'grpo' (PPO clipped surrogate per token); 'gspo' (the clipped surrogate on the
  # sequence ratio exp(mean_t(logp - old_logp)); GSPO clips with small epsilons, e.g. 3e-4 /
  # 4e-4); 'cispo' (-sg(clip(ratio, 1 - epsilon_low, 1 + epsilon_high)) * A * logp).
  c.policy_loss = "grpo"
  # Dual-clip cap c > 1 for negative advantages ('grpo', 'gspo'): the loss of a token with A < 0
  # is at most -c * A; 0 turns it off.
  c.dual_clip_c = 0.0
  # DAPO's soft overlong penalty: a completion of length L > cap - overlong_buffer (cap =
  # sampling.max_new_tokens) gets -min(1, (L - cap + buffer) / buffer) * overlong_penalty added
  # to its reward; 0 turns it off.
  c.overlong_buffer = 0
  c.overlong_penalty = 1.0
  # True leaves truncated completions (no EOS within the cap) out of the loss (their tokens get
  # mask 0; they still count in the group's advantages).
  c.mask_truncated = False
  # Dynamic sampling (DAPO): each step rolls out oversample x grpo.prompts_per_step prompts and
  # trains on prompts_per_step of them, informative groups (reward variance > 0) first.
  # 1: off (every prompt rolled out is trained on).
  c.oversample = 1
  return overrides_lib.apply(c, overrides, "get_grpo_loss_config")
