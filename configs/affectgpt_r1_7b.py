"""Real scale: Qwen2.5-7B-Instruct + CLIP ViT-L/14 + HuBERT-large (PAPER_NOTES.md section 2).

Shapes match the public checkpoints (Qwen/Qwen2.5-7B-Instruct, openai/clip-vit-large-patch14,
TencentGameMate/chinese-hubert-large); convert them with launch.convert.
"""
import ml_collections

from configs import base
from configs import demo


def get_config():
  # Training sections (data, sft, grpo, reward, eval, checkpoint) start from the demo's and
  # are set to the paper's values below; the model is the real one.
  c = demo.get_config()
  c.model = ml_collections.ConfigDict()
  c.model.llm = dict(
      vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
      num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0, rms_norm_eps=1e-6,
      tie_word_embeddings=False, max_position_embeddings=32768,
      dtype="bfloat16", param_dtype="bfloat16", remat=True,
      attention_impl="auto",          # models/attention.py; "cudnn" for cuDNN's fused kernel
      lora=base.lora_config(16, 32.0, 0.05))
  c.model.vision = dict(
      hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
      image_size=224, patch_size=14, num_channels=3, projection_dim=768, layer_norm_eps=1e-5,
      hidden_act="quick_gelu", dtype="bfloat16", param_dtype="bfloat16")
  c.model.audio = dict(
      hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
      hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="layer", feat_proj_layer_norm=True,
      conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
      conv_bias=True, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
      do_stable_layer_norm=True, dtype="bfloat16", param_dtype="bfloat16")
  c.model.fusion = dict(video_dim=768, audio_dim=1024, multi_dim=1024, llm_dim=3584,
                        dtype="bfloat16", param_dtype="float32")
  # Qwen2.5's tokenizer has 151,665 tokens; the embedding table has room up to 152,064.
  c.model.placeholder_ids = dict(multi=151665, audio=151666, video=151667)
  c.model.audio_layers_avg = 4
  c.mesh = base.mesh_config(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = base.sharding_rules()

  # Data (PAPER_NOTES.md sections 3 and 6): SFT on MER-Caption+, GRPO on MER2025-OV, evaluation
  # on OV-MERD+; set the folders with --config.data.sources.<phase>.data_dir=...
  c.data.media.image_size = 224
  c.data.prompt.end_marker = ""
  # The official headline setting (multiface_audio_face_text): OpenFace face crops, not raw
  # frames, and the faces prompt with its <FaceHere> placeholder. A dataset without
  # openface_face/ falls back to its videos (builder.faces_fallback), and the loader then asks
  # for prompt.video_prompt='frames'. Prompt and target each cut at 1,024 tokens, longer samples
  # skipped.
  c.data.builder.visual_source = "faces"
  c.data.prompt.video_prompt = "faces"
  c.data.tokenizer.special_tokens.video = "<FaceHere>"
  c.data.prompt.max_length = 1024
  c.data.prompt.prompt_buckets = (128, 256, 384, 512, 768, 1025)        # <bos> + 1,024
  c.data.prompt.sequence_buckets = (256, 384, 512, 768, 1024, 1026)     # <bos> ... <eos>
  c.data.sources = dict(
      sft=dict(dataset="mercaptionplus", data_dir="", split="train"),
      grpo=dict(dataset="mer2025ov", data_dir="", split="train"),
      eval=dict(dataset="ovmerdplus", data_dir="", split="train"))
  c.tokenizer_dir = ""               # Qwen2.5-7B-Instruct's folder
  c.init_from = ""                   # the launch.convert checkpoint of the three HF models
  c.model.audio_layers_avg = 4
  c.features.standardize = False
  # Cold-start SFT: AdamW lr 1e-5, weight decay 0.05, warmup (PAPER_NOTES.md section 2).
  c.sft.steps = 20000
  c.sft.batch_size = 24
  c.sft.learning_rate = 1e-5
  c.sft.end_learning_rate = 1e-6
  c.sft.warmup_steps = 5000
  c.sft.weight_decay = 0.05
  c.sft.logprob_chunk = 256
  # GRPO (settings seen in reimplementations, PAPER_NOTES.md section 3).
  c.grpo.steps = 1000
  c.grpo.prompts_per_step = 8
  c.grpo.learning_rate = 1e-5
  # Diagnostics: a sampled-completions table every 50 steps, held-out EW-F every 200 (each
  # evaluation generates the whole eval split).
  c.grpo.samples_every = 50
  c.grpo.eval_every = 200
  c.grpo_loss.num_generations = 8
  c.grpo_loss.beta = 0.04
  c.grpo_loss.normalizer_constant = 1024.0
  c.grpo_loss.logprob_chunk = 256
  c.sampling = dict(max_new_tokens=1024, temperature=1.0, top_k=0, top_p=1.0,
                    buckets=(128, 256, 512, 1024))
  c.eval.max_new_tokens = 512
  c.eval.batch_size = 16
  c.unibench.max_new_tokens = 512    # MER-UniBench generation (launch.evaluate)
  c.unibench.batch_size = 16
  c.checkpoint.save_every_steps = 500
  return c
