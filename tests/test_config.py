"""Configuration: source precedence, expansion, environment mapping, overrides, isolation, secrets."""

from __future__ import annotations

import asyncio
import itertools
import threading
import traceback
from pathlib import Path

import pytest
import yaml

from ember.config import (
    ConfigError,
    ConfigManager,
    EmberConfig,
    ProviderConfig,
    create_config_manager,
    get_config_manager,
    set_config_manager,
)
from ember.models._errors import EmberError

SECRET = "sk-test-0123456789abcdefghij"
#: Not shaped like a provider key and never registered, so redaction cannot hide a leak.
PLAIN_SECRET = "correct-horse-battery-staple"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty home and working directory, so no developer config leaks in."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    return home


def write_yaml(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def user_file(home: Path) -> Path:
    return home / ".ember" / "config.yaml"


# --- precedence ---------------------------------------------------------------------


def _flatten_env(data: dict, prefix: str = "EMBER") -> dict[str, str]:
    env = {}
    for key, value in data.items():
        name = f"{prefix}_{key}" if prefix == "EMBER" else f"{prefix}__{key}"
        if isinstance(value, dict):
            env.update(_flatten_env(value, name))
        else:
            env[name.upper()] = str(value)
    return env


class Setup:
    """Collects what each source contributes, then builds a manager and reads through it."""

    def __init__(self, tmp_path: Path, home: Path) -> None:
        self.tmp_path, self.home = tmp_path, home
        self.environ: dict[str, str] = {}
        self.updates: dict = {}
        self.scope: dict | None = None

    def read(self) -> EmberConfig:
        manager = create_config_manager(environ=self.environ)
        for section, values in self.updates.items():
            manager.update_config(section, values)
        if self.scope is None:
            return manager.get_config()
        with manager.scoped(self.scope):
            return manager.get_config()


SOURCES = {
    "scoped": lambda s, data: setattr(s, "scope", data),
    "update_config": lambda s, data: s.updates.update(data),
    "environment": lambda s, data: s.environ.update(_flatten_env(data)),
    "EMBER_CONFIG file": lambda s, data: s.environ.update(
        EMBER_CONFIG=str(write_yaml(s.tmp_path / "extra.yaml", data))
    ),
    "user file": lambda s, data: write_yaml(user_file(s.home), data),
    "project file": lambda s, data: write_yaml(Path.cwd() / "ember.yaml", data),
    "defaults": None,
}
PAIRS = list(itertools.combinations(SOURCES, 2))  # (higher, lower): SOURCES is ordered by precedence


@pytest.mark.parametrize("higher,lower", PAIRS, ids=[f"{h}>{lo}" for h, lo in PAIRS])
def test_higher_source_wins_for_a_scalar(tmp_path, home, higher, lower):
    setup = Setup(tmp_path, home)
    if SOURCES[lower]:
        SOURCES[lower](setup, {"model_registry": {"default_timeout": 11.0}})
    SOURCES[higher](setup, {"model_registry": {"default_timeout": 22.0}})
    assert setup.read().model_registry.default_timeout == 22.0


@pytest.mark.parametrize("higher,lower", PAIRS, ids=[f"{h}>{lo}" for h, lo in PAIRS])
def test_higher_source_wins_for_a_nested_key_and_keeps_siblings(tmp_path, home, higher, lower):
    setup = Setup(tmp_path, home)
    expected_timeout = None
    if SOURCES[lower]:
        SOURCES[lower](setup, {"model_registry": {"providers": {"openai": {"base_url": "http://low", "timeout": 7.0}}}})
        expected_timeout = 7.0
    SOURCES[higher](setup, {"model_registry": {"providers": {"openai": {"base_url": "http://high"}}}})
    openai = setup.read().model_registry.providers.openai
    assert openai.base_url == "http://high"
    assert openai.timeout == expected_timeout


def test_defaults_without_any_source(home):
    config = create_config_manager(environ={}).get_config()
    assert config.model_registry.default_timeout == 60.0
    assert config.model_registry.max_retries == 4
    assert config.app.log_level == "WARNING"
    assert config.app.default_model == "local:smollm2-135m-instruct"
    assert config.app.cache.enabled is False
    assert config.app.cache.directory == home / ".cache" / "ember"
    assert config.data.data_dir == home / ".ember" / "data"


def test_explicit_file_arguments_replace_discovery(tmp_path, home):
    write_yaml(user_file(home), {"app": {"log_level": "ERROR"}})
    other = write_yaml(tmp_path / "mine.yaml", {"app": {"log_level": "DEBUG"}})
    manager = create_config_manager(user_file=other, project_file=tmp_path / "absent.yaml", environ={})
    assert manager.get_config("app").log_level == "DEBUG"


# --- files: expansion, read once ------------------------------------------------------


def test_var_expansion_with_and_without_default(home):
    write_yaml(
        user_file(home),
        {
            "model_registry": {"providers": {"openai": {"base_url": "http://${HOST}:${PORT:-8000}/v1"}}},
            "app": {"default_model": "${MODEL:-openai:gpt-4o}", "log_level": "${LEVEL:-INFO}"},
        },
    )
    config = create_config_manager(environ={"HOST": "box", "LEVEL": ""}).get_config()
    assert config.model_registry.providers.openai.base_url == "http://box:8000/v1"
    assert config.app.default_model == "openai:gpt-4o"
    assert config.app.log_level == "INFO"  # an empty variable takes the default, as in a shell

    config = create_config_manager(environ={"HOST": "box", "PORT": "9", "MODEL": "local:x"}).get_config()
    assert config.model_registry.providers.openai.base_url == "http://box:9/v1"
    assert config.app.default_model == "local:x"


def test_missing_var_without_default_names_var_file_and_key(home):
    path = write_yaml(user_file(home), {"model_registry": {"providers": {"openai": {"api_key": "${MY_KEY}"}}}})
    with pytest.raises(ConfigError) as caught:
        create_config_manager(environ={})
    message = str(caught.value)
    assert "MY_KEY" in message and str(path) in message
    assert "model_registry.providers.openai.api_key" in message


def test_files_are_read_once_until_reload(home):
    path = write_yaml(Path.cwd() / "ember.yaml", {"app": {"log_level": "INFO"}})
    manager = create_config_manager(environ={})
    write_yaml(path, {"app": {"log_level": "ERROR"}})
    assert manager.get_config("app").log_level == "INFO"
    before = manager.revision
    manager.reload()
    assert manager.get_config("app").log_level == "ERROR"
    assert manager.revision != before


def test_missing_ember_config_file_is_an_error(tmp_path, home):
    with pytest.raises(ConfigError, match="EMBER_CONFIG"):
        create_config_manager(environ={"EMBER_CONFIG": str(tmp_path / "nope.yaml")})


def test_malformed_yaml_reports_position_not_content(home):
    path = write_yaml(user_file(home), f"model_registry:\n  providers: {{openai: {{api_key: '{PLAIN_SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        create_config_manager(environ={})
    assert str(path) in str(caught.value) and "line" in str(caught.value)
    assert PLAIN_SECRET not in _everything_shown(caught.value)


# --- environment ----------------------------------------------------------------------


def test_sdk_variables_map_into_the_config(home):
    registry = create_config_manager(
        environ={
            "OPENAI_API_KEY": SECRET,
            "OPENAI_BASE_URL": "http://openai.local/v1",
            "ANTHROPIC_API_KEY": "sk-ant-other-key-123456",
            "ANTHROPIC_BASE_URL": "http://anthropic.local",
        }
    ).get_config("model_registry")
    assert registry.providers.openai.api_key.get_secret_value() == SECRET
    assert registry.providers.openai.base_url == "http://openai.local/v1"
    assert registry.providers.anthropic.api_key.get_secret_value() == "sk-ant-other-key-123456"
    assert registry.providers.anthropic.base_url == "http://anthropic.local"


def test_ember_variable_beats_sdk_variable_and_empty_sdk_variable_is_ignored(home):
    registry = create_config_manager(
        environ={
            "OPENAI_API_KEY": "sdk-key-value",
            "EMBER_MODEL_REGISTRY__PROVIDERS__OPENAI__API_KEY": "ember-key-value",
            "ANTHROPIC_API_KEY": "",
        }
    ).get_config("model_registry")
    assert registry.providers.openai.api_key.get_secret_value() == "ember-key-value"
    assert registry.providers.anthropic.api_key is None


def test_ember_variables_nest_parse_scalars_and_ignore_case(home):
    config = create_config_manager(
        environ={
            "EMBER_APP__CACHE__ENABLED": "true",
            "ember_model_registry__max_retries": "3",
            "EMBER_Model_Registry__Backoff_Base": "0.25",
            "EMBER_MODEL_REGISTRY__PROVIDERS__TOGETHER__KIND": "openai_compatible",
            "EMBER_MODEL_REGISTRY__PROVIDERS__TOGETHER__API_KEY": "0123",
            "EMBER_MODEL_REGISTRY__PROVIDERS__TOGETHER__OPTIONS__STREAM": "false",
            "EMBER_MODEL_REGISTRY__PROVIDERS__TOGETHER__OPTIONS__SEED": "7",
            "EMBER_MODEL_REGISTRY__PROVIDERS__TOGETHER__OPTIONS__NOTE": "~",
            "EMBER_CONFIG": "",  # not a section path: no double underscore
        }
    ).get_config()
    assert config.app.cache.enabled is True
    assert config.model_registry.max_retries == 3
    assert config.model_registry.backoff_base == 0.25
    together = config.model_registry.providers.together
    assert isinstance(together, ProviderConfig)
    assert together.kind == "openai_compatible"
    assert together.api_key.get_secret_value() == "0123"  # digits stay the exact text
    assert together.options == {"stream": False, "seed": 7, "note": None}


def test_unknown_section_in_environment_names_the_variable(home):
    with pytest.raises(ConfigError) as caught:
        create_config_manager(environ={"EMBER_NOPE__X": "1"})
    assert "nope" in str(caught.value) and "EMBER_NOPE__X" in str(caught.value)


# --- runtime overrides ----------------------------------------------------------------


def test_update_config_deep_merges_persistently(home):
    manager = create_config_manager(environ={})
    manager.update_config("model_registry", {"providers": {"openai": {"base_url": "http://a"}}})
    manager.update_config("model_registry", {"providers": {"openai": {"timeout": 5}}})
    openai = manager.get_config("model_registry").providers.openai
    assert (openai.base_url, openai.timeout) == ("http://a", 5.0)
    write_yaml(Path.cwd() / "ember.yaml", {"model_registry": {"providers": {"openai": {"base_url": "http://file"}}}})
    manager.reload()  # overrides survive a reload and still win over files
    assert manager.get_config("model_registry").providers.openai.base_url == "http://a"


def test_update_config_copies_its_input(home):
    manager = create_config_manager(environ={})
    values = {"providers": {"openai": {"base_url": "http://a"}}}
    manager.update_config("model_registry", values)
    values["providers"]["openai"]["base_url"] = "http://changed"
    manager.reload()
    assert manager.get_config("model_registry").providers.openai.base_url == "http://a"


def test_bad_update_raises_and_changes_nothing(home):
    manager = create_config_manager(environ={})
    before = (manager.revision, manager.get_config())
    with pytest.raises(ConfigError) as caught:
        manager.update_config("model_registry", {"default_timeout": -1})
    assert "model_registry.default_timeout" in str(caught.value)
    assert caught.value.keys == ("model_registry.default_timeout",)
    assert (manager.revision, manager.get_config()) == before


def test_unknown_section_is_rejected(home):
    manager = create_config_manager(environ={})
    with pytest.raises(ConfigError, match="unknown config section 'modle_registry'"):
        manager.get_config("modle_registry")
    with pytest.raises(ConfigError, match="unknown config section"):
        manager.update_config("modle_registry", {})
    assert isinstance(ConfigError("x"), EmberError)


def test_reads_share_one_validated_object_until_a_change(home):
    manager = create_config_manager(environ={})
    first = manager.get_config("model_registry")
    assert manager.get_config("model_registry") is first
    manager.update_config("model_registry", {"max_retries": 1})
    assert manager.get_config("model_registry") is not first


# --- scoped overrides -----------------------------------------------------------------


def _scope(timeout: float) -> dict:
    return {"model_registry": {"default_timeout": timeout}}


def test_scopes_nest_and_restore(home):
    manager = create_config_manager(environ={}, overrides={"app": {"log_level": "INFO"}})
    base = manager.revision
    with manager.scoped(_scope(1.0)) as outer_config:
        assert outer_config.model_registry.default_timeout == 1.0
        outer = manager.revision
        with manager.scoped({"model_registry": {"max_retries": 0}}):
            registry = manager.get_config("model_registry")
            assert (registry.default_timeout, registry.max_retries) == (1.0, 0)
            assert manager.revision not in (base, outer)
        assert manager.get_config("model_registry").max_retries == 4
        assert manager.revision == outer
    assert manager.get_config("model_registry").default_timeout == 60.0
    assert manager.get_config("app").log_level == "INFO"
    assert manager.revision == base


def test_scope_sees_later_updates_to_other_keys(home):
    manager = create_config_manager(environ={})
    with manager.scoped(_scope(1.0)):
        before = manager.revision
        manager.update_config("model_registry", {"max_retries": 9, "default_timeout": 2.0})
        registry = manager.get_config("model_registry")
        assert (registry.default_timeout, registry.max_retries) == (1.0, 9)
        assert manager.revision != before


def test_bad_scope_fails_on_entry_and_leaves_no_scope(home):
    manager = create_config_manager(environ={})
    base = manager.revision
    with (
        pytest.raises(ConfigError, match=r"model_registry\.max_retries.*scoped"),
        manager.scoped({"model_registry": {"max_retries": "many"}}),
    ):
        pass
    assert manager.revision == base


def test_scopes_are_isolated_across_threads(home):
    manager = create_config_manager(environ={})
    both_inside = threading.Barrier(2, timeout=10)
    seen = {}

    def worker(timeout: float) -> None:
        with manager.scoped(_scope(timeout)):
            both_inside.wait()  # each thread now reads while the other's scope is active
            seen[timeout] = manager.get_config("model_registry").default_timeout
            both_inside.wait()

    threads = [threading.Thread(target=worker, args=(t,)) for t in (1.0, 2.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {1.0: 1.0, 2.0: 2.0}
    assert manager.get_config("model_registry").default_timeout == 60.0


def test_scopes_are_isolated_across_asyncio_tasks(home):
    manager = create_config_manager(environ={})

    async def main() -> dict:
        entered = {1.0: asyncio.Event(), 2.0: asyncio.Event()}
        seen = {}

        async def worker(timeout: float, other: float) -> None:
            with manager.scoped(_scope(timeout)):
                entered[timeout].set()
                await entered[other].wait()
                seen[timeout] = manager.get_config("model_registry").default_timeout

                async def child() -> float:
                    return manager.get_config("model_registry").default_timeout

                seen[timeout, "child"] = await asyncio.create_task(child())

        await asyncio.gather(worker(1.0, 2.0), worker(2.0, 1.0))
        seen["outside"] = manager.get_config("model_registry").default_timeout
        return seen

    assert asyncio.run(main()) == {1.0: 1.0, 2.0: 2.0, (1.0, "child"): 1.0, (2.0, "child"): 2.0, "outside": 60.0}


# --- validation errors and secrets ----------------------------------------------------


def test_bad_value_names_path_problem_and_source(home):
    path = write_yaml(Path.cwd() / "ember.yaml", {"model_registry": {"providers": {"openai": {"timeout": "soon"}}}})
    with pytest.raises(ConfigError) as caught:
        create_config_manager(environ={})
    message = str(caught.value)
    assert "model_registry.providers.openai.timeout" in message
    assert "valid number" in message and str(path) in message


def test_unknown_key_is_an_error(home):
    write_yaml(user_file(home), {"app": {"log_levle": "DEBUG"}})
    with pytest.raises(ConfigError, match=r"app\.log_levle: Extra inputs are not permitted"):
        create_config_manager(environ={})


def test_log_level_is_checked_and_normalised(home):
    assert create_config_manager(environ={"EMBER_APP__LOG_LEVEL": "debug"}).get_config("app").log_level == "DEBUG"
    with pytest.raises(ConfigError, match=r"app\.log_level"):
        create_config_manager(environ={"EMBER_APP__LOG_LEVEL": "chatty"})


def _everything_shown(error: BaseException) -> str:
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


def test_secret_never_shown(home):
    manager = create_config_manager(environ={"OPENAI_API_KEY": SECRET})
    config = manager.get_config()
    registry = config.model_registry
    shown = [
        repr(config),
        str(config),
        repr(registry.providers),
        str(registry.providers.openai),
        config.model_dump_json(),
        repr(config.model_dump()),
        repr(list(registry.providers.items())),
    ]
    assert not [text for text in shown if SECRET in text]
    # A bad value beside a key, and a secret put where it does not belong: no error shows it.
    bad_updates = [
        {"providers": {"openai": {"timeout": "x"}}},
        {"providers": {"openai": {"timeout": PLAIN_SECRET}}},
        {"providers": {"openai": {"api_key": {"nested": PLAIN_SECRET}}}},
    ]
    for bad in bad_updates:
        with pytest.raises(ConfigError) as caught:
            manager.update_config("model_registry", bad)
        assert SECRET not in _everything_shown(caught.value)
        assert PLAIN_SECRET not in _everything_shown(caught.value)


def test_provider_lookup_by_name(home):
    providers = create_config_manager(
        environ={}, overrides={"model_registry": {"providers": {"together": {"kind": "openai_compatible"}}}}
    ).get_config("model_registry").providers
    assert [name for name, _ in providers.items()] == ["openai", "anthropic", "local", "together"]
    assert providers.get("together") is providers.together
    assert providers.get("openai") is providers.openai
    assert providers.get("missing") is None


# --- the process-wide manager ---------------------------------------------------------


def test_default_manager_is_lazy_shared_and_replaceable(home, monkeypatch):
    monkeypatch.setenv("EMBER_APP__LOG_LEVEL", "ERROR")
    set_config_manager(None)
    try:
        managers = []
        threads = [threading.Thread(target=lambda: managers.append(get_config_manager())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(m) for m in managers}) == 1
        assert managers[0].get_config("app").log_level == "ERROR"
        mine = create_config_manager(environ={})
        set_config_manager(mine)
        assert get_config_manager() is mine and isinstance(mine, ConfigManager)
    finally:
        set_config_manager(None)


def test_seed_import_path():
    from ember.core.configs import ConfigManager as SeedManager
    from ember.core.configs import create_config_manager as seed_create

    assert SeedManager is ConfigManager and seed_create is create_config_manager


# --- model entries, keys and options -----------------------------------------------------


def test_model_entry_schema_matches_model_info():
    """``model_registry.models`` entries are validated by the config layer, which cannot import
    the models layer: its restated schema must keep the fields of ModelInfo."""
    from ember.config._schema import (
        ModelEntryConfig,
        ModelEntryCostConfig,
        ModelEntryProviderConfig,
        ModelEntryRateLimitConfig,
    )
    from ember.models import ModelCost, ModelInfo, ProviderInfo, RateLimit

    pairs = [
        (ModelEntryConfig, ModelInfo, {"id"}),  # the id is the entry's key
        (ModelEntryProviderConfig, ProviderInfo, set()),
        (ModelEntryCostConfig, ModelCost, set()),
        (ModelEntryRateLimitConfig, RateLimit, set()),
    ]
    for entry, info, keyed in pairs:
        assert set(entry.model_fields) == set(info.model_fields) - keyed, entry.__name__


def test_keys_and_base_urls_lose_surrounding_whitespace(home):
    manager = create_config_manager(
        environ={"OPENAI_API_KEY": f"{PLAIN_SECRET}\r\n", "OPENAI_BASE_URL": " http://localhost:1/v1\r"},
        overrides={"model_registry": {"models": {"together:x": {"provider": {"api_key": f"\t{PLAIN_SECRET}-2 "}}}}},
    )
    registry = manager.get_config("model_registry")
    assert registry.providers.openai.api_key.get_secret_value() == PLAIN_SECRET
    assert registry.providers.openai.base_url == "http://localhost:1/v1"
    assert registry.models["together:x"].provider.api_key.get_secret_value() == f"{PLAIN_SECRET}-2"
    assert create_config_manager(environ={"ANTHROPIC_API_KEY": "\r\n"}).get_config(
        "model_registry").providers.anthropic.api_key is None  # fmt: skip


@pytest.mark.parametrize("bad", ["two words", "line\nbreak", "tab\tinside", "nul\x00byte", "curly\u201cquote"])
def test_key_that_can_never_be_sent_is_a_config_error_without_its_value(home, bad):
    key = f"{PLAIN_SECRET}-{bad}"
    with pytest.raises(ConfigError) as caught:
        create_config_manager(environ={"ANTHROPIC_API_KEY": key})
    assert caught.value.keys == ("model_registry.providers.anthropic.api_key",)
    assert "environment variable ANTHROPIC_API_KEY" in str(caught.value)
    assert PLAIN_SECRET not in _everything_shown(caught.value)


def test_credential_options_are_masked_and_revealed_for_use(home):
    from pydantic import SecretStr

    from ember.config import reveal_secrets

    options = {
        "default_headers": {"Authorization": f"Bearer {PLAIN_SECRET}", "X-Team": "research"},
        "default_query": {"api-key": PLAIN_SECRET},
        "auth": {"token": PLAIN_SECRET},
        "max_batch": 8,
        "models": {"tiny": "~/models/tiny.gguf"},
    }
    manager = create_config_manager(environ={}, overrides={"model_registry": {"providers": {"gw": {"options": options}}}})
    config = manager.get_config()
    gateway = config.model_registry.providers.gw
    for text in (repr(config), str(config), repr(config.model_dump()), config.model_dump_json(), repr(gateway)):
        assert PLAIN_SECRET not in text
    assert isinstance(gateway.options["default_headers"]["X-Team"], SecretStr)
    assert gateway.options["max_batch"] == 8 and gateway.options["models"] == {"tiny": "~/models/tiny.gguf"}
    assert reveal_secrets(gateway.options) == options
