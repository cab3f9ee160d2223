"""What each MER-UniBench label .npz stores, as the official readers read it.

One row per .npz dataset (keys of mer.py UNIBENCH): the field the builder reads, the class words
in id order where the file stores int ids, and the official file the order comes from (paths in
the official AffectGPT tree). A dataset whose row has no ids stores the class word itself
('emo': str) or a valence ('val': float); an int id there is a bad label, as is an id outside
its row. IEMOCAP has no train / test corpora: its split comes from the clip name's session
(`SessionSplit`).
"""
from __future__ import annotations

import dataclasses

_READERS = "my_affectgpt/datasets/datasets"


@dataclasses.dataclass(frozen=True)
class NpzLabels:
  """How one dataset's label .npz is read."""
  field: str                  # 'emo' (class word or id) | 'val' (valence)
  ids: tuple[str, ...]        # class words in id order; () = no ids (words or valence)
  source: str                 # the official reader this row follows

  def word(self, index: int) -> str | None:
    """The class word of an id, None when the id is outside the table."""
    return self.ids[index] if 0 <= index < len(self.ids) else None

  def describe(self, dataset: str) -> str:
    if not self.ids:
      return f"the {dataset} table has no ids ({self.source})"
    return f"the {dataset} id table {list(self.ids)} ({self.source})"


NPZ_LABELS = {
    "mer2023": NpzLabels("emo", (), f"{_READERS}/mer2023.py: 'emo' is the class word"),
    "mer2024": NpzLabels("emo", (), f"{_READERS}/mer2024.py: 'emo' is the class word"),
    "meld": NpzLabels("emo", ("anger", "joy", "sadness", "neutral", "disgust", "fear",
                              "surprise"), f"{_READERS}/meld.py `emos`"),
    "iemocapfour": NpzLabels("emo", ("happy", "sad", "neutral", "anger"),
                             f"{_READERS}/iemocap.py `emos`"),
    "cmumosi": NpzLabels("val", (), f"{_READERS}/cmumosi.py: 'val' is the valence"),
    "cmumosei": NpzLabels("val", (), f"{_READERS}/cmumosei.py: 'val' is the valence"),
    "sims": NpzLabels("val", (), f"{_READERS}/sims.py: 'val' is the valence"),
    "simsv2": NpzLabels("val", (), f"{_READERS}/simsv2.py: 'val' is the valence"),
}


@dataclasses.dataclass(frozen=True)
class SessionSplit:
  """Splits of one corpus by the session digit in each clip's name ("Ses05F_impro01_F000")."""
  corpus: str                 # the .npz corpus holding every clip
  position: int               # index of the session digit in the name
  sessions: tuple[int, ...]   # the valid session numbers
  splits: tuple[tuple[str, tuple[int, ...]], ...]   # (split name, its sessions)
  source: str

  def session(self, name: str) -> int | None:
    """The name's session number, None when the name has no valid digit there."""
    digit = name[self.position:self.position + 1]
    if not (digit.isascii() and digit.isdigit()) or int(digit) not in self.sessions:
      return None
    return int(digit)

  def split_names(self) -> tuple[str, ...]:
    return tuple(s for s, _ in self.splits)

  def sessions_of(self, split: str) -> tuple[int, ...]:
    return dict(self.splits)[split]


# Official rule (iemocap.py `split_indexes_using_session`): session = int(name[4]); the
# fifth session is the test set (1,241 clips), sessions 1-4 train.
SESSION_SPLITS = {
    "iemocapfour": SessionSplit("whole_corpus", 4, (1, 2, 3, 4, 5),
                                (("train", (1, 2, 3, 4)), ("test", (5,))),
                                f"{_READERS}/iemocap.py `split_indexes_using_session`"),
}
