"""Import a folder of plain peft LoRA adapters as a zoo: ``python -m dnd_jax.zoo_import``.

    python -m dnd_jax.zoo_import --src MY_ADAPTERS --workdir W [--base_model HF_DIR] [--prompts DIR]
    python -m dnd_jax.train --config my_config.py --workdir W/generator     # config.tasks = the imported tasks

``--src`` holds one folder per task (a peft adapter, or a folder of checkpoints); every adapter is
checked before anything is written. What is accepted, where prompts are found and the layout
written: :mod:`dnd_jax.zoo_importer`.
"""
from __future__ import annotations

from absl import flags

from dnd_jax import cli

# The importer's former home: these names stay importable from here.
from dnd_jax.zoo_importer import ZooImportError, discover, import_zoo, read_checkpoint  # noqa: F401


def define_flags() -> dict:
    return {
        "src": flags.DEFINE_string("src", None, "Folder of task folders, each a peft adapter or a folder of them."),
        "workdir": flags.DEFINE_string("workdir", None, "Working directory; the zoo goes to WORKDIR/zoo."),
        "base_model": flags.DEFINE_string("base_model", None, "HF folder of the base model the adapters apply to "
                                          "(recorded with its content hash)."),
        "prompts": flags.DEFINE_string("prompts", None, "Folder of <task>.jsonl|.txt prompts files."),
        "skip_invalid": flags.DEFINE_bool("skip_invalid", False, "Leave bad checkpoints out (each reported with "
                                          "its reason) instead of failing."),
    }


def main(fl: dict) -> None:
    import_zoo(fl["src"].value, fl["workdir"].value, base_model_path=fl["base_model"].value,
               prompts_dir=fl["prompts"].value, skip_invalid=fl["skip_invalid"].value)


def cli_main() -> None:
    """Console script ``dnd-zoo-import`` (= ``python -m dnd_jax.zoo_import``)."""
    cli.run(define_flags, main, required=("src", "workdir"))


if __name__ == "__main__":
    cli_main()
