"""Defaults shared by every config; each experiment config overrides what differs.

Sections: ``base_model``, ``tasks``/``answer_format`` (registry), ``lora`` + ``zoo`` (collect),
``encoder`` + ``conditions`` (prompt embeddings), ``layout`` (weight tokens), ``model_name`` +
``model`` (decoder), optimizer/schedule/mesh/checkpoint fields (train), ``generate``, ``eval``,
``experiment``.
"""
import ml_collections

from dnd_jax import function_loss
from dnd_jax.weights import centering

LLAMA_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.base_model = dict(kind="smollm2")
    c.tasks = ()
    c.answer_format = "cloze"  # 'cloze' (answer = choice text) or 'mc' (answer = [letter])

    c.lora = dict(r=8, alpha=16, dropout=0.0, target_modules=LLAMA_ALL_LINEAR)
    c.zoo = dict(
        max_train_examples=0,  # 0 = all train examples of a task
        max_len=128,  # tokens per training sequence (context is cut from the left)
        batch_size=8,
        lr=3e-4,
        weight_decay=0.0,
        warmup_steps=5,
        pretrain_steps=60,  # steps before the checkpoint phase
        save_steps=20,  # length of the checkpoint phase
        save_every=1,  # keep a checkpoint every k steps of that phase
        seed=0,  # LoRA init (shared by every task of a zoo) and, by default, the batch order
        data_seed=-1,  # >= 0: another batch order with the same init (replica zoos)
        num_prompts_saved=512,  # size of the condition pool written to prompts.jsonl
        torch_threads=0,  # 0 = torch default
        # k > 0: recompute every k-th decoder layer's activations in the backward instead of keeping them
        # (less memory for long sequences, one more forward of those layers); 0 = keep all. Like
        # torch_threads a process setting, not part of the recipe: the checkpoints are the same.
        activation_checkpointing=0,
    )

    c.encoder = dict(kind="minilm", path="")  # 'minilm' (embedded) or 'path' (sentence-transformers folder)
    c.conditions = dict(num_prompts=32, max_len=32, noise=0.0)

    c.layout = dict(token_shape=(8, 128), normalization="per_token")
    # What the generator predicts a residual from: 'mean' (the normalizer's), or 'similarity' (per
    # prompt set, the softmax(cos / temperature)-weighted mean of the training tasks; dnd_jax.weights.centering).
    c.center = dict(centering.DEFAULTS)

    c.model_name = "hyperconv"
    c.model = dict(hidden_shapes=((64, 32, 128),), kernel_size=3, dtype="float32")

    c.holdout = ()  # tasks never used in training
    c.batch_size = 8
    c.total_steps = 1000
    c.optax_name = "adamw"
    c.lr = 1e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 50
    c.grad_clip_norm = 1.0
    c.target_noise = 0.0
    # Function-space loss (dnd_jax/function_loss.py): weight > 0 adds the answer NLL of the base LM with
    # the generated adapter on labelled training examples of the row's task (off by default).
    c.function_loss = dict(function_loss.DEFAULTS)
    c.token_weights = ""  # '' = uniform; 'inverse_count' weights every matrix equally
    c.mesh = (("data", -1), ("model", 1))
    c.min_shard_size = 2**16  # parameters smaller than this (elements) are replicated
    # (regex over 'params/stage_0/prompt/kernel' paths, tactic) rules; see dnd_jax/sharding.py.
    # Default: every kernel's output channels over 'model'. FSDP: add "|fsdp(axis='data')".
    c.sharding = (
        (r".*/kernel", "shard_dim(axis='model', dim=-1)"),
        (r".*", "replicate"),
    )
    c.sharding_unsplit = "warn"  # a requested split that cannot be made: 'warn' (logged) or 'error'
    c.log_steps = 10
    c.ckpt_steps = 200
    c.keep_ckpts = 2
    c.eval_steps = 200
    c.val_checkpoints_per_task = 1  # last k zoo checkpoints per training task held out for val loss
    c.zoo_workdir = ""  # folder holding zoo/; '' = the train --workdir or its nearest parent with a zoo/

    c.generate = dict(seed=0)
    c.eval = dict(limit=0, batch_size=16, max_new_tokens=8, metrics=("cloze", "mc"), bootstrap=1000,
                  packed=False,  # packed: cloze scores a question's choices in one row (scoring.py)
                  training_lora_metrics=())  # the individual training LoRAs' metrics; () = all of metrics
    c.experiment = dict(holdouts=(), cross_domain=(), baselines=("base", "training_loras", "merged", "nearest", "oracle"))
    return c


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Parse ``key=value,key2=a+b`` from ``--config file.py:arg`` (``holdout=arc_c`` is common)."""
    if not arg:
        return config
    for item in arg.split(","):
        key, _, value = item.partition("=")
        if key == "holdout":
            config.holdout = tuple(v for v in value.split("+") if v)
        elif key in config and isinstance(config[key], (int, float)) and not isinstance(config[key], bool):
            config[key] = type(config[key])(value)
        else:
            raise ValueError(f"unknown config arg '{item}' (supported: holdout=a+b, or a top-level number)")
    return config
