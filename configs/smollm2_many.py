"""The many-task zoo and the task-scaling curve (issue 13) on SmolLM2-135M-Instruct.

Targets: the 7 commonsense tasks and SciQ, all held out at once. Candidate training tasks: every
registered task outside the targets' families: 57 MMLU subjects, 6 basic-skills sets, 2 LAB-Bench
sets, MedQA, SciRIFF and Qasper yes/no, COPA, CB, MRPC, CopyColors, Social IQa, CommonsenseQA,
MedMCQA, SST-2, RTE and 75 BIG-bench tasks (``make data``): 152. A seeded permutation orders them;
pools of K = 6, 12, 25, 50, 100 and all are its prefixes (nested).

Zoo recipe (cheaper than the 8-task zoo's 100 steps x 20 checkpoints, because the study found extra
checkpoints per task add little spread): rank-8 all-linear LoRA, batch 8 x at most 96 tokens, lr 3e-4,
40 steps (the quickstart's length), keeping the checkpoints at steps 35 and 40. Targets are collected first, then the pool in order, so a
partial zoo already serves the small pools. Resumable (``collect`` skips finished tasks).

    make data   # BIG-bench tasks from the bigbench 1.0.0 sdist (358 MB, cached outside git)
    nohup nice -n 10 python -m dnd_jax.collect --config configs/smollm2_many.py --workdir workdir/many &

One point of the curve needs only its prefix of the pool: ``--config configs/smollm2_many.py:pool=100``
collects the targets and the first 100 pool tasks (the same checkpoints the full zoo holds for them);
``python -m dnd_jax.scaling --config configs/smollm2_many.py --sizes 100 ...`` then runs on that zoo.
"""
import ml_collections

from configs import common, smollm2_commonsense
from dnd_jax import task_pools

TARGETS = ("arc_c", "obqa", "arc_e", "piqa", "boolq", "hellaswag", "winogrande", "sciq")
POOL_SEED = 13
POOL_SIZES = (6, 12, 25, 50, 100, 152)


def candidate_names() -> list[str]:
    """Every candidate training task by name (no data needed: the lists are constants)."""
    from dnd_jax.task_sources import bigbench, olmo

    names = [f"mmlu_{s}" for s in olmo.MMLU_SUBJECTS] + [f"basic_skills_{s}" for s in olmo.BASIC_SKILLS]
    names += ["lab_bench_dbqa", "lab_bench_protocolqa", "medqa_en", "sciriff_yesno", "qasper_yesno", "copa", "cb",
              "mrpc", "copycolors", "socialiqa", "csqa", "medmcqa", "sst2", "rte"]
    return names + list(bigbench.EXPECTED_TASKS)


def pool_order() -> list[str]:
    from dnd_jax import tasks

    return task_pools.pool_order(task_pools.candidates(candidate_names(), TARGETS, tasks.family), POOL_SEED)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: ``pool=K`` keeps only the pool's first K tasks (the targets and the pools of size <= K: e.g.
    ``collect --config configs/smollm2_many.py:pool=100`` collects the 108 tasks one point of the curve
    needs); other items as :func:`common.apply_arg`."""
    pool, rest = None, []
    for item in (arg or "").split(","):
        if item.startswith("pool="):
            pool = int(item[len("pool="):])
        elif item:
            rest.append(item)
    config = smollm2_commonsense.get_config()
    order = pool_order()
    if pool is not None:
        if not 0 < pool <= len(order):
            raise ValueError(f"pool={pool}: the pool holds 1 to {len(order)} tasks")
        order = order[:pool]
    config.tasks = TARGETS + tuple(order)
    config.zoo.max_len = 96
    config.zoo.pretrain_steps = 30
    config.zoo.save_steps = 10
    config.zoo.save_every = 5
    config.zoo.num_prompts_saved = 256
    config.experiment.holdouts = TARGETS
    config.experiment.cross_domain = ()
    config.experiment.pool_order = tuple(order)
    config.experiment.pool_sizes = tuple(k for k in POOL_SIZES if k <= len(order))
    # Training-LoRA mean over the first 6 pool tasks (the K=6 pool: shared by every K, evaluated once).
    config.scaling = dict(metrics=("cloze",), temperature=0.05, mean_sample=6, seed=0, geometry=True)
    config.eval.packed = True  # up to 3x faster cloze (ARC-c), same scores to 6e-5 (tests/test_evaluate.py)
    return common.apply_arg(config, ",".join(rest))
