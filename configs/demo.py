"""The embedded demo (DESIGN.md section 5): `python -m launch.grpo` with no flags runs this.

A synthetic multimodal emotion dataset (real mp4 + wav through the media path), the project's
own emotion wheel, a byte-level BPE tokenizer trained offline, a small AffectGPT with the real
architecture (random frozen encoders, features cached once), cold-start SFT on noisy labels
(MER-Caption+-like), then GRPO on the emotion-wheel reward with clean labels (MER2025-OV-like),
then held-out evaluation. Small enough for one CPU in minutes.
"""
import ml_collections

from configs import base
from configs.checkpoint import get_checkpoint_config
from configs.data import get_data_config
from configs.grpo_loss import get_grpo_loss_config
from configs.reward import get_reward_config
from configs.unibench import get_unibench_config


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The demo trains one run per seed (affect_jax/train/seeds.py: <workdir>/seed_<s>, sharing the
  # data) and reports each seed's held-out EW-F with the mean and spread; () = one run with
  # c.seed in the workdir itself.
  c.seeds = (0, 1, 2)
  c.ew_dir = ""                      # "" = the project's demo wheel
  # Start from a launch.convert checkpoint or another run's workdir ("" = random init / SFT).
  c.init_from = ""
  c.data = get_data_config()
  c.data.media.image_size = 32       # the tiny CLIP tower's input
  # R1 output format: "<think>reason</think><answer>labels</answer>" then EOS, nothing after
  # (the format reward allows only whitespace after </answer>).
  c.data.prompt.end_marker = ""
  c.data.cache_dir = ""              # "" = <workdir>/data
  # Which data each phase reads: a dataset of affect_jax/data/builders (demo, mercaptionplus,
  # ovmerd, ovmerdplus, mer2025ov, unibench:<name>), its folder ("" = generate the demo set)
  # and split. The paper: SFT on MER-Caption+, GRPO on MER2025-OV, evaluation on OV-MERD+.
  c.data.sources = dict(
      sft=dict(dataset="demo", data_dir="", split="train"),
      grpo=dict(dataset="demo", data_dir="", split="rl"),
      eval=dict(dataset="demo", data_dir="", split="test"))
  # The decoder's tokenizer folder ("" = train the demo's byte-level BPE offline); its special
  # tokens (data.tokenizer.special_tokens) are added when missing.
  c.tokenizer_dir = ""

  c.model = ml_collections.ConfigDict()
  # vocab_size and placeholder ids come from the tokenizer at run time (-1 = fill in).
  c.model.llm = dict(
      vocab_size=-1, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
      tie_word_embeddings=True, max_position_embeddings=512, dtype="float32",
      param_dtype="float32", remat=False,
      # models/attention.py: "auto" = the CPU-tuned kernels on CPU, jax.nn.dot_product_attention
      # on GPU / TPU; or "reference", "xla", "cudnn", "cpu_tuned".
      attention_impl="auto",
      # The demo decoder starts from random weights, so it is trained in full (rank 0);
      # the real recipe (configs/affectgpt_r1_7b.py) uses LoRA r16 on a pretrained Qwen2.5.
      lora=base.lora_config(0, 0.0, 0.0))
  c.model.vision = dict(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, num_channels=3, projection_dim=32, layer_norm_eps=1e-5,
      hidden_act="quick_gelu", dtype="float32", param_dtype="float32")
  c.model.audio = dict(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
      hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="layer", feat_proj_layer_norm=True,
      conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),
      conv_bias=True,
      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
      dtype="float32", param_dtype="float32")
  # (The conv strides multiply to 320 samples per frame, as in HuBERT: 50 frames per second.)
  c.model.fusion = dict(video_dim=32, audio_dim=64, multi_dim=64, llm_dim=128,
                        dtype="float32", param_dtype="float32")
  c.model.placeholder_ids = dict(multi=-1, audio=-1, video=-1)
  c.model.audio_layers_avg = 2

  c.features = ml_collections.ConfigDict()
  c.features.batch_size = 16         # clips per encoder call (one compiled shape)
  c.features.standardize = True      # z-score features with train-split statistics

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 300
  c.sft.batch_size = 16
  c.sft.learning_rate = 2e-3
  c.sft.end_learning_rate = 1e-4
  c.sft.warmup_steps = 30
  c.sft.weight_decay = 0.01
  c.sft.grad_clip = 1.0
  c.sft.micro_batches = 1
  c.sft.logprob_chunk = 64
  c.sft.log_every = 10

  c.grpo = ml_collections.ConfigDict()
  c.grpo.steps = 45
  c.grpo.prompts_per_step = 16
  c.grpo.learning_rate = 2e-4
  c.grpo.weight_decay = 0.0
  c.grpo.grad_clip = 1.0
  c.grpo.log_every = 5
  # Diagnostics (README "Diagnostics"), none of which changes the training. label_histogram:
  # log reward/n_pred_hist, the completions per predicted-label count 0..reward.ew.max_labels
  # (+ one bin for more), as a TensorBoard histogram. samples_every: every N steps write
  # samples_per_log sampled completions (whole groups first) with their reward terms to
  # samples.jsonl and TensorBoard text (0 = off). eval_every: held-out EW-F every N GRPO
  # steps besides the end (0 = only at the end).
  c.grpo.label_histogram = True
  c.grpo.samples_every = 15
  c.grpo.samples_per_log = 8
  c.grpo.eval_every = 15
  c.grpo_loss = get_grpo_loss_config(num_generations=8, beta=0.04, logprob_chunk=64,
                                     loss_aggregation="token_mean")
  # Rollouts at temperature 0.7: samples near the greedy policy that evaluation uses.
  c.sampling = dict(max_new_tokens=80, temperature=0.7, top_k=0, top_p=1.0,
                    buckets=(32, 48, 64, 96, 128))
  c.reward = get_reward_config()

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32
  c.eval.max_new_tokens = 80
  # MER-UniBench evaluation (python -m launch.evaluate), at the demo's generation length.
  c.unibench = get_unibench_config(batch_size=32, max_new_tokens=80)

  c.checkpoint = get_checkpoint_config()
  c.mesh = base.mesh_config(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = base.sharding_rules()
  return c
