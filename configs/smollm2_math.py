"""SmolLM2-135M-Instruct, math: a zoo of LoRAs on GSM8K, the seven MATH subjects and arithmetic, leave-one-out.

Zoo: rank-8 all-linear LoRAs, zero-shot prompts ("Question: ...\\nAnswer:" for GSM8K, "Problem:\\n...
\\n\\nSolution:" for MATH, "a op b =" for arithmetic), loss on the gold solution only, sequences cut to
384 tokens (the problem keeps its last <= 192 tokens, the solution loses its tail; 0-13% of the examples
are longer, 52% of geometry). 40 steps of batch 8, then 20 more keeping a checkpoint at each.

Held out in turn: GSM8K (train 819 / test 500 of its 1319 test problems, seeded) and MATH prealgebra
(train 671 / test 200). Metrics on the first 200 test problems: bits per byte of the gold solution
(primary) and, for GSM8K, exact match of the final number after greedy decoding of at most
``eval.max_new_tokens`` tokens.

    python -m dnd_jax.experiment --config configs/smollm2_math.py --workdir workdir/math --docs docs/results/math

Resumable: rerun the same command after an interruption. Unit costs and projected times are in
``docs/results/math/README.md``.
"""
import ml_collections

from configs import common

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_config()
    config.base_model = dict(kind="smollm2")
    config.tasks = ("gsm8k",) + tuple(f"minerva_math_{s}" for s in MATH_SUBJECTS) + ("basic_skills_arithmetic_gen",)
    config.answer_format = "cloze"  # ignored by generative tasks (the answer is the gold solution)

    # --- zoo (collect) ---
    config.lora = dict(r=8, alpha=16, dropout=0.0, target_modules=common.LLAMA_ALL_LINEAR)
    config.zoo.max_train_examples = 0
    config.zoo.max_len = 384
    config.zoo.batch_size = 8
    config.zoo.lr = 3e-4
    config.zoo.warmup_steps = 5
    config.zoo.pretrain_steps = 40
    config.zoo.save_steps = 20
    config.zoo.save_every = 1
    config.zoo.num_prompts_saved = 512

    # --- generator (train): the commonsense architecture ---
    config.conditions.num_prompts = 32
    config.conditions.max_len = 32
    config.conditions.noise = 0.0
    config.layout.token_shape = (192, 8)
    config.layout.normalization = "per_element"
    config.model.hidden_shapes = ((32, 32, 64), (64, 64, 32))
    config.model.kernel_size = 3
    config.batch_size = 4
    config.total_steps = 400
    config.lr = 1e-2
    config.warmup_steps = 50
    config.weight_decay = 1e-4
    config.log_steps = 10
    config.eval_steps = 100
    config.ckpt_steps = 100
    config.keep_ckpts = 2
    config.val_checkpoints_per_task = 1

    # --- experiment ---
    # The similarity-weighted merge (label-free, from the same unlabeled prompts as nearest) joins the baselines.
    config.experiment.baselines = ("base", "training_loras", "merged", "simmerge", "nearest", "oracle")
    config.experiment.holdouts = ("gsm8k", "minerva_math_prealgebra")
    config.eval.limit = 200
    # Greedy generation decodes 32 problems at a time (stopped rows leave the batch): 2.77 CPU s per GSM8K
    # problem against 5.20 at 8, the same texts (docs/bench/greedy_batch_gsm8k.json); also the cloze batch.
    config.eval.batch_size = 32
    config.eval.metrics = ("bpb", "exact_match", "cloze")  # cloze: the commonsense cross-domain target only
    # Every system decodes every problem for exact match. The 8 individual training LoRAs are scored on bits
    # per byte only (the training-LoRA mean and best training LoRA are bpb rows), so 6 systems decode
    # (base, merged, simmerge, nearest, DnD, oracle) instead of 13: about half the decoding cost. Add the
    # rest later with --config.eval.training_lora_metrics='()': evaluations are cached per (adapter,
    # metric), so only the missing cells run.
    config.eval.training_lora_metrics = ("bpb",)
    config.eval.max_new_tokens = 192  # GSM8K gold solutions: median 91, p90 153 tokens
    # Cross-domain, both ways: the commonsense generator (trained on all 7 commonsense tasks: the SciQ
    # cross-domain generator of configs/smollm2_commonsense.py; skipped with a message if absent) makes
    # adapters for this domain's held-out targets, and GSM8K's generator (trained on this domain's
    # other tasks) makes one for ARC-Challenge, scored by cloze accuracy against the base model.
    config.experiment.foreign_generators = {"commonsense": "workdir/smollm2/generators/sciq"}
    config.experiment.foreign_targets = {"arc_c": "gsm8k"}
    return common.apply_arg(config, arg)
