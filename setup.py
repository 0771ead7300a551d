"""dnd_jax: Drag-and-Drop LLMs (prompt-to-LoRA-weights generator) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="dnd_jax",
    version="0.1.0",
    description="Drag-and-Drop LLMs: a prompt-conditioned LoRA weight generator in JAX/Flax",
    packages=find_packages(include=["dnd_jax", "dnd_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=0.1.1",
        "absl-py>=2.1",
        # torch is pinned by the Makefile to the CPU wheel on disk before this resolves;
        # a range it satisfies keeps pip from pulling a CUDA build.
        "torch>=2.4",
        "transformers>=5.0",
        "sentence-transformers>=3.0",
        "peft>=0.14",
        "safetensors>=0.4",
        "datasets>=3.0",
        "gguf>=0.10",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        # python -m dnd_jax.serve (tested with fastapi 0.165.0, starlette 1.10.0, uvicorn 0.54.0)
        "fastapi>=0.165,<1",
        "uvicorn>=0.54,<1",
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100", "pytest-xdist>=3.5"]},
)
