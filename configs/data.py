"""The data side of a config: media decoding, the demo dataset, the tokenizer and the prompts.

Other configs attach it: `c.data = data.get_data_config()`. Every number and string the data
code uses lives here (affect_jax/data/*.py read these fields and hold no magic numbers).
Defaults follow AffectGPT (PAPER_NOTES.md sections 2 and 7): 8 frames resized to 224x224 with
CLIP's normalisation, 16 kHz mono audio cut into 8 evenly spread 2 s windows, the
"###Human: ... ###Assistant: " prompt.
"""
import ml_collections

# CLIP (openai/clip-vit-*) image normalisation, as in CLIPImageProcessor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Qwen2's pre-tokenisation regex (split before byte-level BPE).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+")


def media_config() -> ml_collections.ConfigDict:
  """Frames, face crops and audio windows (affect_jax/data/media.py)."""
  c = ml_collections.ConfigDict()
  c.num_frames = 8              # F frames (or face crops) per clip
  c.image_size = 224            # S: frames and face crops resized to S x S (no crop)
  c.image_mean = CLIP_MEAN
  c.image_std = CLIP_STD
  # Resize filter of video frames: 'pil_bilinear' (Pillow's antialiased bilinear, the closest
  # to decord's FFmpeg scale filter, libswscale's default bilinear) | 'cv2_linear'.
  c.frame_resize = "pil_bilinear"
  c.face_resize = "cv2_linear"  # face crops: cv2.resize's default, as AffectGPT's load_face
  # 'official': np.arange(0, n, n / min(F, n)).astype(int), its last index repeated up to F
  # (AffectGPT's load_video / load_face); 'floor': index i = floor(i * n / F);
  # 'linspace': round(linspace(0, n - 1, F)) (first and last frame always included).
  c.frame_sampling = "official"
  # Channel order of the uint8 face crops in openface_face/<name>/<name>.npy: 'rgb' uses them
  # as stored (AffectGPT hands them to CLIP unchanged); 'bgr' reverses them.
  c.face_channel_order = "rgb"
  c.sample_rate = 16000         # HuBERT input rate (Hz); audio is resampled to it
  c.num_windows = 8             # K windows per clip
  c.window_seconds = 2.0        # window length; shorter clips are zero-padded to it
  # HuBERT input: each window minus its mean (AffectGPT's audio path does this), then the
  # Wav2Vec2FeatureExtractor normalisation (x - mean) / sqrt(var + epsilon):
  # audio_normalize 'checkpoint' (iff the HuBERT checkpoint's preprocessor_config.json sets
  # do_normalize; the recipe fills hubert_do_normalize from config.init_from) | 'on' | 'off'.
  c.window_zero_mean = True
  c.audio_normalize = "checkpoint"
  c.hubert_do_normalize = False   # set by experiment.resolve_media from init_from's meta.json
  # 'clip': mean and variance over all K windows of a clip (AffectGPT gives the feature
  # extractor the [K, W] array as one input, one clip per call at inference); 'window': each.
  c.audio_normalize_span = "clip"
  c.audio_normalize_epsilon = 1e-7   # Wav2Vec2FeatureExtractor's
  return c


def synthetic_config() -> ml_collections.ConfigDict:
  """The demo dataset (affect_jax/data/synthetic.py): sizes, seeds, rendering and noise."""
  c = ml_collections.ConfigDict()
  c.seed = 20250801
  c.splits = dict(train=240, rl=120, test=96)
  # Emotion vocabulary: the words of one wheel file of the project's demo wheel; clusters are
  # its level-1 groups, words its level-2 and level-3 cells (lowercased). '' = the package's
  # affect_jax/emotion/demo_wheel.
  c.wheel_dir = ""
  c.wheel_file = "wheel1.csv"
  c.word_levels = (2, 3)
  # Latent emotion set: 1..max_words_primary words of one cluster, plus with probability
  # second_cluster_prob one word of another cluster.
  c.max_words_primary = 2
  c.second_cluster_prob = 0.3
  # Per-modality noise: probability that a modality shows the cues of a random other cluster.
  c.video_mislead_prob = 0.25
  c.audio_mislead_prob = 0.25
  c.text_mislead_prob = 0.2
  c.text_neutral_prob = 0.25    # subtitle without any emotion word
  # SFT split labels are noisier than rl / test (as MER-Caption+'s automatic labels are):
  # with train_extra_prob one word of the cluster's confusable neighbour is added, with
  # train_swap_prob one word is replaced by a random vocabulary word.
  c.train_extra_prob = 0.6
  c.train_swap_prob = 0.1
  # Video: frames drawn at frame_size x frame_size, written as mp4 (fourcc) at fps.
  c.frame_size = 64
  c.num_frames_range = (6, 16)  # inclusive; some clips have fewer frames than media.num_frames
  c.fps = 8
  c.fourcc = "mp4v"
  c.hue_jitter = 4.0            # degrees (std)
  c.word_hue_offset = 5.0       # degrees between the words of one cluster
  c.saturation = 200
  c.value = 200
  c.shape_radius_range = (0.18, 0.32)   # fraction of frame_size
  c.second_shape_scale = 0.5
  c.speed_range = (0.5, 3.0)    # pixels per frame, cluster speeds spread over it
  c.speed_jitter = 0.2          # relative, uniform
  c.start_range = (0.3, 0.7)    # shape's start position, fraction of the free area
  c.pixel_noise = 6.0           # std of the added Gaussian noise, uint8 levels
  c.shapes = ("circle", "square", "triangle", "ring", "cross", "diamond")
  # Audio: a tone at the cluster's pitch, amplitude-modulated at its tempo, plus noise.
  c.wav_sample_rate = 22050     # written rate (read back through the resampler)
  c.duration_range = (1.5, 4.0)  # seconds; some clips are shorter than a window
  c.pitch_range = (140.0, 700.0)  # Hz, cluster pitches log-spaced over it
  c.word_pitch_step = 0.03      # relative pitch offset between the words of one cluster
  c.pitch_jitter = 0.02         # relative (std)
  c.tempo_range = (1.5, 6.0)    # amplitude-modulation rate (Hz), cluster tempos spread over it
  c.tempo_jitter = 0.1          # relative, uniform
  c.num_harmonics = 3
  c.second_tone_gain = 0.4
  c.noise_gain = 0.08
  c.peak = 0.7                  # peak amplitude of the written wav
  c.stereo_prob = 0.25
  # CSV cell styles of the openset column (all parsed alike by the official list parser).
  c.openset_styles = ("[{items}]", "{items_nospace}", "['{items_quoted}']")
  # Subtitles: '{word}' is an emotion word (or a misleading one); neutral templates have none.
  c.subtitle_templates = (
      "I feel so {word} about all of this.",
      "Honestly, this makes me {word}.",
      "You have no idea how {word} I am right now.",
      "Well, I guess I am a little {word} today.",
      "Why does everything leave me {word}?",
      "It is strange, but I am {word}.",
  )
  c.neutral_templates = (
      "We should talk about the plan tomorrow.",
      "The meeting starts at nine in the morning.",
      "I put the keys on the kitchen table.",
      "Let me tell you what happened yesterday.",
      "Can you pass me that folder, please?",
  )
  # Reason (the SFT <think> text): what the clip shows, then the labels.
  c.reason_template = ("The {color} {shape} moves {speed}; the voice is {pitch} and {tempo}; "
                       "{words}. The character seems {labels}.")
  c.reason_words_template = "the words sound {word}"
  c.reason_no_words = "the words carry no emotion"
  c.color_names = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
  c.speed_names = ("slowly", "quickly")
  c.pitch_names = ("low", "high")
  c.tempo_names = ("calm", "lively")
  # Official MER-Caption+ layout inside each split folder (PAPER_NOTES.md section 6).
  c.labels_file = "track2_train_mercaptionplus.csv"
  c.reasons_file = "track3_train_mercaptionplus.csv"
  c.subtitles_file = "subtitle_chieng.csv"
  c.video_dir = "video"
  c.audio_dir = "audio"
  c.hash_length = 12            # hex digits of the config hash in the folder name
  return c


def tokenizer_config() -> ml_collections.ConfigDict:
  """The demo's byte-level BPE tokenizer (affect_jax/data/tokenizer.py)."""
  c = ml_collections.ConfigDict()
  c.vocab_size = 1024           # including the special and added tokens
  c.min_frequency = 2
  c.pretokenize_regex = QWEN2_PRETOKENIZE_REGEX
  # Special tokens take ids 0.. by role: pad, eos, multi, audio, video (then other roles
  # alphabetically: bos), independent of the training texts; the model config maps modalities
  # 'multi', 'audio', 'video' to the placeholders' ids (tokenizer.placeholder_ids).
  # bos is Qwen2.5's as the official load_tokenizer_from_LLM sets it ("<|im_start|>").
  c.special_tokens = dict(pad="<|endoftext|>", eos="<|im_end|>", multi="<MultiHere>",
                          audio="<AudioHere>", video="<FrameHere>", bos="<|im_start|>")
  # Added as normal (non-special) single tokens right after the special ones, so they survive
  # decode(skip_special_tokens=True) and the reward reads them as text. () leaves them to BPE.
  c.added_tokens = ("<think>", "</think>", "<answer>", "</answer>")
  c.model_max_length = 512
  return c


def prompt_config() -> ml_collections.ConfigDict:
  """The AffectGPT prompt and target layout (affect_jax/data/prompts.py).

  The strings are the official template word for word (base_dataset.py
  get_prompt_for_multimodal, PAPER_NOTES.md section 7): 'faces' is `multiface_audio_face_text`,
  'frames' is `multiframe_audio_frame_text`.
  """
  c = ml_collections.ConfigDict()
  c.human = "###Human: "
  c.assistant = " ###Assistant: "
  # Blocks in prompt order; '{token}' is the modality's placeholder (tokenizer.special_tokens)
  # repeated tokens_per_block times, '{subtitle}' the subtitle. A block whose modality is not in
  # `modalities` is left out.
  c.modalities = ("multi", "audio", "video", "subtitle")
  c.tokens_per_block = 1        # the official num_{video,audio,multi}_query_token
  c.multi_block = "The audio and video merged info is: <Multi>{token}</Multi>. "
  c.audio_block = "The audio content is as follows: <Audio>{token}</Audio>. "
  # Which video sentence the prompt says: 'faces' (face crops) or 'frames' (raw frames). It
  # must name the visual input the dataset holds (builder.visual_source, which the pipeline
  # checks); the video placeholder is then <FaceHere> or <FrameHere>
  # (tokenizer.special_tokens.video).
  c.video_prompt = "frames"
  c.video_blocks = dict(
      faces=("Meanwhile, we uniformly sample raw frames from the video and extract faces from "
             "these frames: <Video>{token}</Video>. "),
      frames="Meanwhile, we uniformly sample raw frames from the video: <Video>{token}</Video>. ")
  c.subtitle_block = "The subtitle of this video is: <Subtitle>{subtitle}</Subtitle>. "
  c.instruction = "Now, please answer my question based on all the provided information. "
  c.question = "Please recognize all possible emotional states of the character."
  # Target, then end_marker, then EOS: 'think_answer' "<think>reason</think><answer>labels
  # </answer>" (R1 cold start), 'answer' "<answer>labels</answer>", 'labels' the labels alone.
  c.target_format = "think_answer"
  c.think_template = "<think>{reason}</think>"
  c.answer_template = "<answer>{labels}</answer>"
  c.label_separator = ", "
  c.end_marker = "###"
  # Lengths in tokens, as the official loader: the prompt and the target are each cut at
  # max_length tokens, and an SFT sample whose prompt + target exceed max_length is skipped
  # (counted as a too_long skip); the SFT sequence is <bos> prompt target <eos>, so at most
  # max_length + 2 tokens. The official max_length is 1,024 (configs/affectgpt_r1_7b.py).
  c.max_length = 254
  # Rollout / evaluation prompts start with <bos> as the SFT sequences do (True), or carry no
  # <bos> as the official inference (conversation_video.answer_sample) sends them (False).
  c.generation_bos = True
  # Padded lengths are the smallest bucket that fits; the largest must hold max_length + 1
  # (prompts) and max_length + 2 (sequences) to take every sample.
  c.prompt_buckets = (32, 48, 64, 96, 128, 192, 255)
  c.sequence_buckets = (64, 96, 128, 192, 256)
  return c


def builder_config() -> ml_collections.ConfigDict:
  """Dataset building (affect_jax/data/builders/mer.py)."""
  c = ml_collections.ConfigDict()
  c.media = "raw"               # 'raw' (decoded arrays) | 'paths' (decoded by the pipeline)
  c.visual_source = "frames"    # 'frames' from video/ | 'faces' from openface_face/
  # visual_source 'faces' on a dataset folder without openface_face/: 'frames' builds it from
  # its videos (logged, recorded in its metadata) | 'error' refuses.
  c.faces_fallback = "frames"
  c.validate = "decode"         # paths mode: 'decode' every file once | 'exists' only
  c.compression = "zlib"        # array encoding in the records: 'zlib' | 'none'
  c.num_workers = 0             # processes decoding media while building (0: in-process)
  c.jobs_per_worker = 4         # clips queued per decoding process (bounds memory)
  c.labels_file = ""            # overrides the layout's label file name ('' = the official)
  c.subtitle_column = ""        # overrides the layout's subtitle column ('' = the official
                                # reader's: english; chinese for MER2024; sentence for OV-MERD+)
  # A table row with a longer cell (a runaway subtitle, a broken quote swallowing the file) is
  # skipped as oversize_cell; the other rows are read.
  c.max_cell_chars = 131_072
  return c


def pipeline_config() -> ml_collections.ConfigDict:
  """The grain input pipeline (affect_jax/data/pipeline.py); loops override batch_size, seed,
  shuffle, num_epochs and drop_remainder per phase."""
  c = ml_collections.ConfigDict()
  c.batch_size = 4
  c.shuffle = True
  c.seed = 0                    # shuffle seed (a non-negative 32-bit int)
  c.num_epochs = 0              # 0: repeat forever; n: n passes over this host's shard
  c.drop_remainder = True       # False: the last batch is padded, marked in example_mask
  c.shard_index = -1            # -1 (both): this JAX process of all (grain ShardByJaxProcess)
  c.shard_count = -1
  c.shard_drop_remainder = False  # True: equal shards, the remainder of the records dropped
  c.worker_count = 0            # processes transforming and prefetching batches (0: inline)
  c.worker_buffer_size = 2      # batches each worker prepares ahead
  c.read_threads = 2            # threads reading records (grain ReadOptions)
  c.read_buffer = 16            # records read ahead
  c.neutral_label = "neutral"   # the SFT target's label when a clip's label set is empty
  return c


def get_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.media = media_config()
  c.synthetic = synthetic_config()
  c.tokenizer = tokenizer_config()
  c.prompt = prompt_config()
  c.builder = builder_config()
  c.pipeline = pipeline_config()
  return c


def get_config() -> ml_collections.ConfigDict:
  return get_data_config()
