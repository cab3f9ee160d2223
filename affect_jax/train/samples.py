"""The GRPO step's sampled completions (grpo_step.SAMPLES) as rows for run_log.write_samples.

  rows = completion_rows(metrics[grpo_step.SAMPLES], batch["names"], tokenizer, first_prompt)

Each row: the prompt's clip name, its index in the step's batch, the completion text (special
tokens dropped, as the held-out evaluation decodes), its length in tokens, the reward it was
trained on, its advantage and every reward term of that completion.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np


def completion_rows(samples: Mapping, names: Sequence[str], tokenizer,
                    first_prompt: int = 0) -> list[dict]:
  """samples: the step's metrics[SAMPLES]; names: the clip names of this process's prompts,
  which are the batch's prompts first_prompt, first_prompt + 1, ... (a prompt another process
  read is named by its index)."""
  s = jax.device_get(samples)
  tokens, lengths = np.asarray(s["tokens"]), np.asarray(s["lengths"])
  rows = []
  for i in range(len(lengths)):
    prompt = int(s["prompt"][i])
    local = prompt - first_prompt
    name = str(names[local]) if 0 <= local < len(names) else f"prompt {prompt}"
    rows.append(dict(
        name=name, prompt_index=prompt,
        completion=tokenizer.decode(tokens[i, :lengths[i]], skip_special_tokens=True),
        length=int(lengths[i]), reward=float(s["reward"][i]),
        advantage=float(s["advantage"][i]),
        terms={k: np.asarray(v[i]).item() for k, v in s["terms"].items()}))
  return rows
