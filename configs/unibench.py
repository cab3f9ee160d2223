"""The MER-UniBench evaluation's section of a config: what `python -m launch.evaluate` reads.

Other configs attach it: `c.unibench = unibench.get_unibench_config()`; a config without it
gets these defaults. Generation answers the official zero-shot question (data.prompt.question)
in the R1 format; labels come from the <answer> span, from the rule extractor (emotion-wheel
surface forms in the text) or from a local LLM with the official extraction settings
(PAPER_NOTES.md section 5: Qwen2.5-Instruct, temperature 0.7, top-p 0.8, repetition penalty
1.05, at most 512 new tokens).
"""
import ml_collections

from configs import overrides as overrides_lib

# The 9 sets in the order of the paper's table (keys of affect_jax/data/builders/mer.py UNIBENCH).
SETS = ("mer2023", "mer2024", "meld", "iemocapfour", "cmumosi", "cmumosei", "sims", "simsv2",
        "ovmerdplus")

# The official emotion-extraction prompts (AffectGPT / MER-UniBench, PAPER_NOTES.md section 5);
# '{text}' is the model's output (labels prompt) or the extracted labels (sentiment prompt).
LABEL_PROMPT = (
    "Please assume the role of an expert in the field of emotions. We provide clues that may "
    "be related to the emotions of the characters. Based on the provided clues, please "
    "identify the emotional states of the main character. Please separate different emotional "
    "categories with commas and output only the clearly identifiable emotional categories in "
    "a list format. If none are identified, please output an empty list. Input: {text}; "
    "Output: ")
SENTIMENT_PROMPT = (
    "Please act as an expert in the field of emotions. We provide a few words to describe the "
    "emotions of a character. Please choose the most likely sentiment from the given "
    "candidates: [positive, negative, neutral]. Input: {text}; Output: ")


def llm_config(**overrides) -> ml_collections.ConfigDict:
  """The LLM extractor (affect_jax/emotion/llm_extract.py)."""
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
  c.batch_size = 16
  c.max_new_tokens = 512
  c.greedy = True
  c.temperature = 1.0           # used when greedy is False
  c.top_p = 1.0
  c.seed = 0
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
  return overrides_lib.apply(c, overrides, "get_unibench_config")


def get_config() -> ml_collections.ConfigDict:
  return get_unibench_config()
