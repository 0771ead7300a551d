"""dnd_jax: Drag-and-Drop LLMs (prompt-to-LoRA-weights generator) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="dnd_jax",
    version="0.1.0",
    description="Drag-and-Drop LLMs: a prompt-conditioned LoRA weight generator in JAX/Flax",
    packages=find_packages(include=["dnd_jax", "dnd_jax.*"]),
    python_requires=">=3.10",
    # Ranges = the versions the suite is tested with here (lower bound = `.venv/bin/pip freeze`) up to
    # the next release line that may change an API this code calls (upper bound); tests/test_spine.py
    # checks the installed versions fall inside. jax/jaxlib are held to 0.10.x: sharding.DEFAULT_RULES
    # pins activations around an XLA SPMD gradient bug (docs/scaleout/model_sharding_grad.md,
    # reproduced on jax/jaxlib 0.4.38-0.10.2; tests/test_sharding.py, tests/test_scaleout_grads.py)
    # that a new jaxlib may fix or change. Widen a bound only after running `make test` on the new version.
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1.0,<2",
        "absl-py>=2.5.1,<3",
        # torch is pinned by the Makefile to the CPU wheel on disk before this resolves;
        # a range it satisfies keeps pip from pulling a CUDA build.
        "torch>=2.13,<3",
        "transformers>=5.24.0,<6",
        "sentence-transformers>=6.2.0,<7",
        "peft>=0.21.2,<0.22",
        "safetensors>=0.8.0,<0.9",
        "datasets>=5.2.0,<6",
        "gguf>=0.19.0,<0.20",
        "numpy>=2.4.6,<3",
        "tqdm>=4.70.1,<5",
        "matplotlib>=3.11.2,<4",
        "tensorboardX>=2.6.5,<3",
        # python -m dnd_jax.serve (tested with fastapi 0.165.0, starlette 1.10.0, uvicorn 0.54.0)
        "fastapi>=0.165.0,<1",
        "uvicorn>=0.54.0,<1",
    ],
    package_data={"dnd_jax": ["py.typed"]},
    entry_points={"console_scripts": [
        "dnd-collect=dnd_jax.collect:cli_main",
        "dnd-train=dnd_jax.train:cli_main",
        "dnd-generate=dnd_jax.generate:cli_main",
        "dnd-evaluate=dnd_jax.evaluate:cli_main",
        "dnd-experiment=dnd_jax.experiment:cli_main",
        "dnd-scaling=dnd_jax.scaling:cli_main",
        "dnd-geometry=dnd_jax.geometry:cli_main",
        "dnd-weights=dnd_jax.weights.__main__:cli_main",
        "dnd-serve=dnd_jax.serve:cli_main",
        "dnd-zoo-import=dnd_jax.zoo_import:cli_main",
    ]},
    extras_require={"dev": ["pytest>=9.2.0,<10", "ruff>=0.17.6,<0.18", "hypothesis>=6.170.17,<7",
                            "pytest-xdist>=3.8.0,<4"]},
)
