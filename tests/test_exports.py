"""The public surface, checked the way trio's test_exports does: every public name imports,
nothing private leaks, and every import path the architecture document uses resolves."""

import importlib
import subprocess
import sys
import types

import pytest

PUBLIC_MODULES = [
    "ember",
    "ember.api",
    "ember.api.data",
    "ember.api.models",
    "ember.api.non",
    "ember.api.operators",
    "ember.config",
    "ember.data",
    "ember.data.builders",
    "ember.eval",
    "ember.local",
    "ember.models",
    "ember.models.providers",
    "ember.non",
    "ember.operators",
    "ember.testing",
    "ember.xcs",
    "ember.api.xcs",
]

# Every import the architecture document writes, as written there.
SEED_IMPORTS = [
    "from ember import initialize_ember",
    "from ember.api import models, non",
    "from ember.api.models import ModelRegistry, ModelInfo, ModelService",
    "from ember.api.operators import Operator, Specification, EmberModel",
    "from ember.api.data import DataLoader",
    "from ember.core.app_context import get_app_context",
    "from ember.core.configs import ConfigManager, create_config_manager",
    "from ember.core.utils.data.service import DataService",
    "from ember.core.utils.data.base.samplers import RandomSampler",
    "from ember.core.utils.eval.pipeline import EvaluationPipeline",
    "from ember.core.utils.eval.evaluators import MultipleChoiceEvaluator",
    "from ember.xcs import XCSGraph, execute_graph, execution_options",
    "from ember.xcs import jit, JITMode",
    "from ember.xcs import autograph, execute_graph, execution_options",
    "from ember.xcs import jit, execution_options",
    "import ember.api.xcs",
    "from ember.xcs import vmap, pmap, compose, DeviceMesh, PartitionSpec, mesh_sharded",
]
# The package table of the document: each path must import.
SEED_PACKAGES = [
    "ember.api", "ember.api.models", "ember.api.operator", "ember.api.non", "ember.api.data", "ember.core",
    "ember.core.app_context", "ember.core.configs", "ember.core.types", "ember.core.registry.model",
    "ember.core.registry.operator", "ember.core.registry.specification", "ember.core.utils", "ember.core.utils.data",
    "ember.core.utils.eval", "ember.core.non", "ember.api.xcs", "ember.xcs", "ember.xcs.graph", "ember.xcs.engine",
    "ember.xcs.tracer",
]  # fmt: skip


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_imports_and_nothing_private_leaks(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    assert not [n for n in exported if n.startswith("_")], f"{name}.__all__ lists private names"
    for attribute in exported:
        assert getattr(module, attribute) is not None, f"{name}.{attribute}"
    public = {k for k, v in vars(module).items() if not k.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(exported), f"{name} leaks {sorted(public - set(exported))}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_star_import_gives_exactly_all(name):
    namespace: dict = {}
    exec(f"from {name} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(importlib.import_module(name).__all__)


@pytest.mark.parametrize("statement", SEED_IMPORTS)
def test_seed_import_statements_work(statement):
    exec(statement, {})


@pytest.mark.parametrize("name", SEED_PACKAGES)
def test_seed_package_paths_import(name):
    importlib.import_module(name)


def test_seed_aliases_are_the_modules_themselves():
    import ember.core.utils.eval.pipeline as seed_pipeline
    import ember.eval
    from ember.core.app_context import get_app_context
    from ember.core.configs import ConfigManager

    assert seed_pipeline is ember.eval
    assert get_app_context is importlib.import_module("ember._context").get_app_context
    assert ConfigManager is importlib.import_module("ember.config").ConfigManager


def test_a_seed_alias_leaves_the_real_module_a_package():
    import ember.core.registry.model  # the alias of ember.models
    import ember.models

    assert ember.models.__spec__.name == "ember.models"
    assert ember.models.__spec__.submodule_search_locations  # still a package
    from importlib import resources

    assert resources.files("ember.models").joinpath("catalogue.yaml").is_file()


def test_no_shim_package_tree_exists():
    import ember

    assert not any(path.name == "core" for path in __import__("pathlib").Path(ember.__file__).parent.iterdir())


def test_import_ember_loads_no_sdk_or_jax():
    code = "import sys, ember; print(sorted(m for m in ('jax', 'openai', 'anthropic', 'ember.models') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
