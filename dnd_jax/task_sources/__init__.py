"""Task sources beyond the commonsense suite, for the many-task zoo (the task-scaling curve).

Each module registers its tasks into :data:`dnd_jax.tasks.TASKS` when imported (the registry imports
them on first lookup of an unknown name), with a ``family`` so that a held-out target never shares a
source with a training task:

- :mod:`.olmo`: the 57 MMLU subjects (family ``mmlu``), the oe-eval ``basic_skills_*`` (``basic_skills``)
  and ``lab_bench_*`` (``lab_bench``) sets, MedQA, SciRIFF and Qasper yes/no, COPA, CB, MRPC, CopyColors;
- :mod:`.bigbench`: the multiple-choice BIG-bench tasks, read from the ``bigbench`` 1.0.0 source
  distribution (``make data``; never installed).
"""

from __future__ import annotations

import zlib

import numpy as np

MAX_CHOICES = 8  # mc labels run A-H


def cap_choices(prompt: str, choices: list[str], gold: int, max_choices: int = MAX_CHOICES) -> tuple[list[str], int]:
    """Keep the gold choice and ``max_choices - 1`` distractors drawn with a per-prompt seed (order kept)."""
    if len(choices) <= max_choices:
        return list(choices), gold
    rng = np.random.default_rng(zlib.crc32(prompt.encode()))
    others = [i for i in range(len(choices)) if i != gold]
    keep = sorted([gold, *rng.choice(others, max_choices - 1, replace=False).tolist()])
    return [choices[i] for i in keep], keep.index(gold)
