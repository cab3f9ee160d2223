"""The MER-UniBench evaluation's section of a config: what `python -m launch.evaluate` reads.

Other configs attach it: `c.unibench = unibench.get_unibench_config()`; a config without it
gets these defaults. Under protocol 'r1' (the default) generation answers the official
zero-shot question (data.prompt.question) in the R1 format; labels come from the <answer>
span, from the rule extractor (emotion-wheel surface forms in the text) or from a local LLM
with the official extraction settings (PAPER_NOTES.md section 5: Qwen2.5-Instruct, temperature
0.7, top-p 0.8, repetition penalty 1.05, at most 512 new tokens). `protocols.affectgpt` holds
the official AffectGPT evaluation's settings, applied over these fields by --protocol=affectgpt.
"""
import ml_collections

from configs import overrides as overrides_lib

# The 9 sets in the order of the paper's table (keys of affect_jax/data/builders/mer.py UNIBENCH).
SETS = ("mer2023", "mer2024", "meld", "iemocapfour", "cmumosi", "cmumosei", "sims", "simsv2",
        "ovmerdplus")

# The official extraction prompts, word for word (AffectGPT toolkit/utils/qwen.py
# reason_to_openset_qwen and openset_to_sentiment_qwen; in the sentiment prompt each line
# continuation keeps the space before it and the next line's 12-space indentation, 13 spaces);
# '{text}' is the model's output (labels prompt) or the labels answer (sentiment prompt).
LABEL_PROMPT = (
    "Please assume the role of an expert in the field of emotions. We provide clues that may "
    "be related to the emotions of the characters. Based on the provided clues, please "
    "identify the emotional states of the main character. The main character is the one with "
    "the most detailed clues. Please separate different emotional categories with commas and "
    "output only the clearly identifiable emotional categories in a list format. If none are "
    "identified, please output an empty list. Input: We cannot recognize his emotional state; "
    "Output: [] Input: His emotional state is happy, sad, and angry; Output: [happy, sad, "
    "angry] Input: {text}; Output: ")
_GAP = " " * 13     # the sentiment prompt's line breaks in the official source
SENTIMENT_PROMPT = (
    "Please act as an expert in the field of emotions." + _GAP + "We provide a few words to "
    "describe the emotions of a character." + _GAP + "Please choose the most likely sentiment "
    "from the given candidates: [positive, negative, neutral]" + _GAP + "Please direct output "
    "answer without analyzing process." + _GAP + "Input: [joyful]; Output: positive" + _GAP +
    "Input: []; Output: neutral" + _GAP + "Input: {text}; Output: ")
# The official zero-shot question (datasets func_get_qa_ovlabel, question_only=True).
OFFICIAL_QUESTION = "Please recognize all possible emotional states of the character."


def llm_config(**overrides) -> ml_collections.ConfigDict:
  """The LLM extractor (affect_jax/eval/llm_extract.py)."""
  c = ml_collections.ConfigDict()
  c.temperature = 0.7
  c.top_p = 0.8
  c.repetition_penalty = 1.05
  c.max_new_tokens = 512
  c.greedy = False              # True: argmax decoding (reproducible; tests use it)
  c.batch_size = 8              # prompts per generate call (one compiled shape)
  c.seed = 0
  c.dtype = ""                  # '' = the checkpoint's own dtype; 'bfloat16' / 'float32'
  c.tokenizer_dir = ""          # '' = the checkpoint folder, then its conversion source
  c.buckets = (128, 256, 512, 1024, 2048)    # prompt lengths (tokens), padded up to one
  c.stop_tokens = ("<|im_end|>", "<|endoftext|>")   # end generation (with the EOS id)
  c.label_prompt = LABEL_PROMPT
  c.sentiment_prompt = SENTIMENT_PROMPT
  c.sentiments = ("positive", "negative", "neutral")
  # The chat: an optional system message, then the prompt as the user message. '' = none,
  # so the chat template adds its own default (Qwen2.5: "You are Qwen, created by Alibaba
  # Cloud. You are a helpful assistant."), as evaluation.py's vLLM batch calls do; the
  # official one-prompt helper (get_completion_qwen) sends "You are a helpful assistant.".
  c.system_message = ""
  # Reading the answers: 'lenient' (the first [...] span; the first candidate word found) or
  # 'official' (evaluation.py: func_postprocess_qwen, the whole answer is the label cell, a
  # sentiment answer counts only when it equals a candidate, else it scores as neutral).
  c.parsing = "lenient"
  return overrides_lib.apply(c, overrides, "llm_config")


def get_unibench_config(**overrides) -> ml_collections.ConfigDict:
  """The evaluation section; keyword arguments override fields (e.g. `batch_size=8`)."""
  c = ml_collections.ConfigDict()
  c.sets = ",".join(SETS)       # default of --sets
  # Split of each set: the corpus of a label .npz ('test' finds test_corpus / test1_corpus;
  # IEMOCAP's whole_corpus splits by session: 'test' = session 5, the official test set) or
  # the name given to a CSV folder's one split.
  c.splits = dict(mer2023="test", mer2024="test", meld="test", iemocapfour="test",
                  cmumosi="test", cmumosei="test", sims="test", simsv2="test",
                  ovmerdplus="test")
  # Sub-folder names of --data_dir tried for each set (compared lowercase, '+' read as 'plus',
  # other punctuation and spaces ignored: 'OV-MERD+' matches 'ovmerdplus').
  c.folders = dict(mer2023=("mer2023",), mer2024=("mer2024",), meld=("meld",),
                   iemocapfour=("iemocapfour", "iemocap"), cmumosi=("cmumosi", "mosi"),
                   cmumosei=("cmumosei", "mosei"), sims=("sims", "chsims"),
                   simsv2=("simsv2", "chsimsv2"), ovmerdplus=("ovmerdplus", "ovmerd"))
  # Generation (the zero-shot answer of the model under test).
  c.batch_size = 16             # clips per batch (compiled rows: rounded up to the mesh)
  # Batch clips whose prompts pad to the same data.prompt.prompt_buckets length together (less
  # padding); False = batches in set order. Outputs keep the set's order either way.
  c.bucket_by_length = True
  c.max_new_tokens = 512
  c.greedy = True
  c.temperature = 1.0           # used when greedy is False
  c.top_p = 1.0
  c.top_k = 0                   # 0 = off
  c.repetition_penalty = 0.0    # 0 = config.sampling's (1.0 = off)
  c.seed = 0
  c.question = ""               # '' = data.prompt.question
  # data.prompt fields set for evaluation only (e.g. generation_bos); empty = the data config's.
  c.prompt = ml_collections.ConfigDict()
  # Generation also stops after the token sequences of `stop_text` (as the official Chat's
  # stopping criteria for "###"); the text is then cut before its last `stop_text` and kept
  # after the last `response_after` (answer_sample's post-processing). '' = off.
  c.stop_text = ""
  c.response_after = ""
  # Labels: 'answer' (<answer> span, official list rule), 'rule' (surface forms in the text),
  # 'llm' (the LLM extractor below). Sentiment: 'wheel' (metrics.label_polarity) or 'llm'.
  c.extractor = "answer"
  c.sentiment = "wheel"
  # Rule extractor: a matched label is dropped when one of the `negation_window` words
  # before it is a negation.
  c.negations = ("not", "no", "never", "without", "nor", "hardly", "isn't", "aren't",
                 "wasn't", "weren't", "don't", "doesn't", "didn't", "isn’t", "don’t",
                 "doesn’t", "didn’t")
  c.negation_window = 2
  c.llm = llm_config()
  # Modality ablation (default of --ablate; affect_jax/eval/ablation.py): a comma list of
  # multi, audio, video, subtitle; each item is one more pass over every set with those
  # inputs' prompt blocks left out ('+' masks several in one pass: 'audio+multi'), reported
  # with its delta to the full model. '' = the full model only.
  c.ablate = ""
  # The video sentence of an ablation that masks audio but keeps video: the official faceonly /
  # frameonly wording (base_dataset.py), which starts "We ..." where the full prompt's
  # "Meanwhile, we ..." follows the audio block. '{token}' as in data.prompt.video_blocks.
  c.ablate_video_blocks = dict(
      faces=("We uniformly sample raw frames from the video and extract faces from these "
             "frames: <Video>{token}</Video>. "),
      frames="We uniformly sample raw frames from the video: <Video>{token}</Video>. ")
  # --protocol (default `protocol`): 'r1' keeps the fields above; 'affectgpt' overrides them
  # with the official AffectGPT evaluation (inference_hybird.py answer_sample: sampling,
  # temperature 1, top-p 0.9, 1,200 new tokens, stop at "###"; top-k 20 is the default of
  # Qwen2.5-Instruct's generation_config.json, which transformers' generate applies because
  # answer_sample passes none; then evaluation.py: labels and sentiment by the LLM with the
  # official prompts and answer reading).
  c.protocol = "r1"
  c.protocols = dict(
      r1=dict(),
      affectgpt=dict(greedy=False, temperature=1.0, top_p=0.9, top_k=20, max_new_tokens=1200,
                     repetition_penalty=1.0, question=OFFICIAL_QUESTION, stop_text="###",
                     response_after="Assistant:", extractor="llm", sentiment="llm",
                     # answer_sample sends the prompt without <bos> (conversation_video.py).
                     prompt=dict(generation_bos=False), llm=dict(parsing="official")))
  return overrides_lib.apply(c, overrides, "get_unibench_config")


def get_config() -> ml_collections.ConfigDict:
  return get_unibench_config()
