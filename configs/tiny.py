"""A tiny AffectGPT with the real architecture, for tests and quick checks on one CPU."""
import ml_collections

from configs import base


def get_config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.llm = dict(
      vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
      tie_word_embeddings=True, max_position_embeddings=512,
      dtype="float32", param_dtype="float32", remat=False,
      attention_impl="auto",          # models/attention.py (configs/demo.py says more)
      lora=base.lora_config(4, 8.0, 0.0))
  c.model.vision = dict(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, num_channels=3, projection_dim=24, layer_norm_eps=1e-5,
      hidden_act="quick_gelu", dtype="float32", param_dtype="float32")
  c.model.audio = dict(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="layer", feat_proj_layer_norm=True,
      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), conv_bias=True,
      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
      dtype="float32", param_dtype="float32")
  c.model.fusion = dict(video_dim=24, audio_dim=32, multi_dim=32, llm_dim=64,
                        dtype="float32", param_dtype="float32")
  c.model.placeholder_ids = dict(multi=509, audio=510, video=511)
  c.model.audio_layers_avg = 2
  c.mesh = base.mesh_config(data=1, fsdp=-1, tensor=1)
  c.sharding_rules = base.sharding_rules()
  return c
