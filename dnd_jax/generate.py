"""Generate peft adapters from prompts: ``python -m dnd_jax.generate`` (the API: :mod:`dnd_jax.generator`).

    python -m dnd_jax.generate --checkpoint W --prompts prompts.txt --out my_adapter
    python -m dnd_jax.generate --checkpoint W --task arc_c --out arc_c   # ARC-c's unscored test prompts
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from absl import flags

from dnd_jax import cli

# The API's former home: these names stay importable from here.
from dnd_jax.generator import (  # noqa: F401
    MAX_PROMPT_CHARS_PER_TOKEN,
    Adapter,
    GenerateError,
    Generator,
    choose_prompts,
    prompts_hash,
    read_prompts,
)


def define_flags() -> dict:
    """CLI flags, defined only when run as a program (so verbs can share one process)."""
    return {
        "checkpoint": flags.DEFINE_string("checkpoint", None, "Generator workdir (the one given to dnd_jax.train)."),
        "step": flags.DEFINE_integer("step", None, "Generator checkpoint step (default: latest)."),
        "prompts": flags.DEFINE_multi_string("prompts", [], "Prompt file: .txt (one per line) or .jsonl ('prompt')."),
        "out": flags.DEFINE_multi_string("out", [], "Output adapter folder, one per --prompts (or per --task)."),
        "task": flags.DEFINE_multi_string("task", [], "Take prompts from the task registry instead of a file."),
        "split": flags.DEFINE_enum("split", "unscored", ["unscored", "test", "train"],
                                   "Prompts for --task: 'unscored' (default) = the task's test prompts that "
                                   "evaluation does not score (past the generator config's eval.limit; its train "
                                   "split if too few are left), or the whole 'test' or 'train' split."),
        "overwrite": flags.DEFINE_bool("overwrite", False, "Replace existing --out adapter folders (never a folder holding other files)."),
        "json": flags.DEFINE_bool("json", False, "Print a machine-readable JSON summary."),
        "seed": flags.DEFINE_integer("seed", None, "Seed for choosing N prompts when more are given (default: the "
                                     "generator config's generate.seed, as the experiment draws them)."),
    }


def _jobs(fl: dict, trained) -> list[tuple[list[str], str]]:
    """(prompts, out) pairs, every input read and every output checked before any compute (``trained``:
    the generator's training config, or None if the checkpoint has none)."""
    from dnd_jax import tasks
    from dnd_jax.weights import peft_io

    if fl["prompts"].value and fl["task"].value:
        raise GenerateError("give either --prompts or --task, not both")
    sources = [(read_prompts(p), p) for p in fl["prompts"].value]
    if fl["task"].value:  # tasks declared as files in the generator's training config (config.task_files)
        from dnd_jax import plan, task_files

        if trained is None:
            Generator.load(fl["checkpoint"].value, fl["step"].value)  # names what is missing
        task_files.register_config(trained)
        for t in fl["task"].value:
            if fl["split"].value == "unscored":  # never a question `evaluate` scores (dnd_jax.plan)
                sources.append((plan.condition_prompts(trained, t), t))
            else:
                sources.append(([e.prompt for e in tasks.load_examples(t, fl["split"].value)], t))
    if not sources:
        raise GenerateError("nothing to generate: give --prompts FILE or --task NAME")
    outs = fl["out"].value
    if len(outs) != len(sources):
        raise GenerateError(f"{len(sources)} prompt sources but {len(outs)} --out folders: give one --out each")
    if len({str(Path(o).resolve()) for o in outs}) != len(outs):
        raise GenerateError(f"two --out flags name the same folder: {outs}")
    for out in outs:
        peft_io.check_output_dir(out, fl["overwrite"].value)
    return [(ps, out) for (ps, _), out in zip(sources, outs)]


def main(fl: dict) -> None:
    wall0 = time.perf_counter()
    from dnd_jax import task_files

    if not fl["checkpoint"].value:
        raise GenerateError("--checkpoint (the generator workdir) is required")
    trained = task_files.generator_training_config(fl["checkpoint"].value, fl["step"].value)
    jobs = _jobs(fl, trained)
    gen = Generator.load(fl["checkpoint"].value, fl["step"].value)
    timings = {"load_s": gen.load_time_s}
    seed = fl["seed"].value
    if seed is None:  # as the experiment draws them
        seed = int((trained.get("generate") or {}).get("seed", 0)) if trained is not None else 0
    adapters = gen.generate_many([ps for ps, _ in jobs], seed=seed, timings=timings)
    t0 = time.perf_counter()
    outs = [str(a.save(out, overwrite=fl["overwrite"].value)) for a, (_, out) in zip(adapters, jobs)]
    timings["write_s"] = time.perf_counter() - t0
    timings["wall_s"] = time.perf_counter() - wall0
    if fl["json"].value:
        print(json.dumps({"adapters": outs, "timings": timings}, indent=2))
    else:
        for out in outs:
            print(f"wrote {out}")
        print("timing: " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in timings.items()))


def cli_main() -> None:
    """Console script ``dnd-generate`` (= ``python -m dnd_jax.generate``)."""
    cli.run(define_flags, main, required=())


if __name__ == "__main__":
    cli_main()
