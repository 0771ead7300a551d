"""SmolLM2-135M-Instruct, coding: a zoo of LoRAs on MBPP in 8 programming languages, leave-one-language-out.

Zoo: rank-8 all-linear LoRAs trained on the MBPP problems of the ``train`` ids (299 per language;
the 200 ``test`` ids are never trained on in any language, see ``dnd_jax.task_sources.math_code``),
prompt "<problem>\\n```<language>\\n", loss on the solution (code + closing fence) only, sequences
cut to 256 tokens (the problem keeps its last <= 128 tokens, the solution loses its tail; 2-6% of
the examples are longer). 40 steps of batch 8, then 20 more keeping a checkpoint at each.

Held out in turn: Python (evaluated on mt_mbpp_python, and on HumanEval and MBPP in Python, where the
Python generator makes an adapter from MBPP's own unscored prompts (its train ids) and, since HumanEval
scores all 164 of its problems, from the held-out Python's unscored prompts for HumanEval (so HumanEval's
DnD adapter is mt_mbpp_python's, byte for byte); Python's zoo LoRA is the oracle), JavaScript (TypeScript is in the zoo) and Rust. Metrics: bits per byte of the gold
solution (primary; n = 200 test problems, HumanEval all 164), pass@1 for HumanEval and MBPP (greedy,
at most ``eval.max_new_tokens`` new tokens, executed against the tests in ``dnd_jax.sandbox``).

    python -m dnd_jax.experiment --config configs/smollm2_coding.py --workdir workdir/coding --docs docs/results/coding

Resumable: rerun the same command after an interruption. Unit costs and projected times are in
``docs/results/coding/README.md``.
"""
import ml_collections

from configs import common

LANGUAGES = ("python", "javascript", "typescript", "java", "cpp", "go", "rust", "php")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_config()
    config.base_model = dict(kind="smollm2")
    config.tasks = tuple(f"mt_mbpp_{lang}" for lang in LANGUAGES)
    config.answer_format = "cloze"  # ignored by generative tasks (the answer is the gold solution)

    # --- zoo (collect) ---
    config.lora = dict(r=8, alpha=16, dropout=0.0, target_modules=common.LLAMA_ALL_LINEAR)
    config.zoo.max_train_examples = 0
    config.zoo.max_len = 256
    config.zoo.batch_size = 8
    config.zoo.lr = 3e-4
    config.zoo.warmup_steps = 5
    config.zoo.pretrain_steps = 40
    config.zoo.save_steps = 20
    config.zoo.save_every = 1
    config.zoo.num_prompts_saved = 512

    # --- generator (train): the commonsense architecture (same LoRA shapes -> same 1590 x (192, 8) tokens) ---
    config.conditions.num_prompts = 32
    config.conditions.max_len = 32  # coding prompts are 20-25 tokens: whole
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
    # Python (with HumanEval and MBPP: most of the decoding) second, so `experiment --shard=I/2` runs it
    # alone in shard 1 and JavaScript + Rust in shard 0 (launch/queue.sh's two 1-core shards).
    config.experiment.holdouts = ("mt_mbpp_javascript", "mt_mbpp_python", "mt_mbpp_rust")
    config.experiment.also_evaluate = {"mt_mbpp_python": ("codex_humaneval", "codex_mbpp")}
    config.eval.limit = 200
    # Greedy generation decodes 32 problems at a time (stopped rows leave the batch): 2.77 CPU s per GSM8K
    # problem against 5.20 at 8, the same texts (docs/bench/greedy_batch_gsm8k.json); also the cloze batch.
    config.eval.batch_size = 32
    config.eval.metrics = ("bpb", "pass@1", "cloze")  # cloze: the commonsense cross-domain target only
    # Every system decodes every problem for pass@1. The 7 individual training LoRAs are scored on bits
    # per byte only (the training-LoRA mean and best training LoRA are bpb rows), so 6 systems decode
    # (base, merged, simmerge, nearest, DnD, oracle) instead of 12: about half the decoding cost. Add the
    # rest later with --config.eval.training_lora_metrics='()': evaluations are cached per (adapter,
    # metric), so only the missing cells run.
    config.eval.training_lora_metrics = ("bpb",)
    config.eval.max_new_tokens = 128  # greedy pass@1 generation budget (HumanEval gold bodies: median 48 tokens)
    # Cross-domain, both ways: the commonsense generator (trained on all 7 commonsense tasks: the SciQ
    # cross-domain generator of configs/smollm2_commonsense.py; skipped with a message if absent) makes
    # adapters for this domain's held-out targets, and Python's generator (trained on this domain's
    # other tasks) makes one for ARC-Challenge, scored by cloze accuracy against the base model.
    config.experiment.foreign_generators = {"commonsense": "workdir/smollm2/generators/sciq"}
    config.experiment.foreign_targets = {"arc_c": "mt_mbpp_python"}
    return common.apply_arg(config, arg)
