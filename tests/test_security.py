"""Credentials stay secret and unusable input fails early: logs (tracebacks included), keys read
from CRLF files, config dumps, malformed model entries, and requests that could never be sent.

Every test goes through the public surface with the real SDKs against the loopback server.
The planted keys are not shaped like provider keys, so only Ember's registration of the
secret, not the key-shape pattern, can hide them.
"""

from __future__ import annotations

import io
import logging
import math
import traceback
from pathlib import Path

import pytest
import yaml

from ember.config import ConfigError, create_config_manager
from ember.models import (
    InvalidCredentialsError,
    InvalidRequestError,
    MissingCredentialsError,
    ModelError,
    ModelRegistry,
    ModelService,
)
from ember.testing import LoopbackServer

#: Looks like no provider's key: nothing but registration can mask it.
PLANTED = "plain-planted-credential-4f9a2c77e1"
HEADER_SECRET = "gateway-token-9d8c7b6a5f4e"


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with LoopbackServer() as server:
        yield server


def _environ(monkeypatch, server, key: str = PLANTED, *, suffix: str = "") -> None:
    for name, value in server.environ(key).items():
        monkeypatch.setenv(name, value + (suffix if name.endswith("API_KEY") else ""))


@pytest.fixture
def root_log():
    """A DEBUG handler on the root logger writing to a string, as ``logging.basicConfig`` would."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _shown(error: BaseException) -> str:
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


# --- 2. keys in DEBUG logs -------------------------------------------------------------------


def test_debug_logs_of_every_logger_and_tracebacks_never_show_the_key(server, monkeypatch, root_log, caplog):
    _environ(monkeypatch, server)
    caplog.set_level(logging.DEBUG)
    service = ModelService(config_manager=create_config_manager())
    try:
        assert service("openai:gpt-4o", f"please repeat {PLANTED}").text
        assert service("anthropic:claude-3-5-haiku", "hello").text
    finally:
        service.close()
    logger = logging.getLogger("my_app.jobs")  # a user's logger: no prefix list names it
    try:
        raise RuntimeError(f"request failed with key {PLANTED}")
    except RuntimeError:
        logger.exception("call with key=%s failed", PLANTED)
    logger.debug("stack check %s", PLANTED, stack_info=True)

    output = root_log.getvalue()
    names = {line.split(" ", 2)[1].rstrip(":") for line in output.splitlines() if line.startswith("DEBUG ")}
    assert any(name.startswith(("httpx", "httpcore")) for name in names)  # the SDKs' transport logged
    assert "Traceback (most recent call last)" in output and "RuntimeError: request failed with key ***" in output
    assert PLANTED not in output
    assert PLANTED not in caplog.text
    record = caplog.records[-2]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError  # caplog still sees the exception


# --- 3. a key read from a CRLF file --------------------------------------------------------------


def test_key_and_base_url_with_trailing_crlf_are_stripped_and_work(server, monkeypatch, root_log):
    _environ(monkeypatch, server, suffix="\r\n")
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url + "\r")
    monkeypatch.setenv("MYVLLM_KEY", PLANTED + "\r")
    manager = create_config_manager(
        overrides={"model_registry": {"providers": {"myvllm": {
            "kind": "openai_compatible", "base_url": server.openai_base_url, "api_key_env": "MYVLLM_KEY"}}}}
    )  # fmt: skip
    assert manager.get_config("model_registry").providers.openai.api_key.get_secret_value() == PLANTED
    service = ModelService(config_manager=manager)
    try:
        for model_id in ("openai:gpt-4o", "anthropic:claude-3-5-haiku", "myvllm:llama"):
            response = service(model_id, "What is 2 + 2?")
            assert response.attempts == 1, model_id
    finally:
        service.close()
    assert [r.status for r in server.requests] == [200, 200, 200]
    assert all(r.has_api_key for r in server.requests)
    assert PLANTED not in root_log.getvalue()


def test_key_with_whitespace_inside_is_a_config_error_naming_the_variable_not_the_value(server, monkeypatch):
    _environ(monkeypatch, server, key="plain planted\tcredential")
    with pytest.raises(ConfigError) as caught:
        create_config_manager()
    shown = _shown(caught.value)
    assert "model_registry.providers.openai.api_key" in shown and "environment variable OPENAI_API_KEY" in shown
    assert "whitespace" in shown
    assert "plain planted" not in shown and "planted\tcredential" not in shown


def test_key_with_whitespace_inside_from_api_key_env_is_refused_before_any_request(server, monkeypatch):
    _environ(monkeypatch, server)
    monkeypatch.setenv("MYVLLM_KEY", "plain-planted\r\ncredential-xyz")
    manager = create_config_manager(
        overrides={"model_registry": {"providers": {"myvllm": {
            "kind": "openai_compatible", "base_url": server.openai_base_url, "api_key_env": "MYVLLM_KEY"}}}}
    )  # fmt: skip
    service = ModelService(config_manager=manager)
    try:
        with pytest.raises(InvalidCredentialsError) as caught:
            service("myvllm:llama", "hi")
    finally:
        service.close()
    assert isinstance(caught.value, MissingCredentialsError)
    shown = _shown(caught.value)
    assert "MYVLLM_KEY" in shown and "whitespace or control characters" in shown
    assert "plain-planted" not in shown and "credential-xyz" not in shown
    assert server.stats.total == 0


# --- 4. config dumps and malformed model entries ----------------------------------------------


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_per_model_key_and_header_options_are_masked_in_every_dump(server, monkeypatch, tmp_path):
    _environ(monkeypatch, server)
    _write(tmp_path / "ember.yaml", {"model_registry": {
        "providers": {"gateway": {
            "kind": "openai_compatible", "base_url": server.openai_base_url,
            "options": {"default_headers": {"Authorization": f"Bearer {HEADER_SECRET}", "X-Team": "research"}},
        }},
        "models": {"openai:gpt-x": {"provider": {"api_key": PLANTED}, "cost": {
            "input_cost_per_million": 1, "output_cost_per_million": 2}}},
    }})  # fmt: skip
    manager = create_config_manager()
    config = manager.get_config()
    registry = config.model_registry
    shown = [
        repr(config), str(config), repr(config.model_dump()), config.model_dump_json(),
        repr(registry.models), repr(registry.providers.gateway), registry.providers.gateway.model_dump_json(),
        repr(list(registry.providers.items())),
    ]  # fmt: skip
    assert not [text for text in shown if PLANTED in text or HEADER_SECRET in text]

    service = ModelService(config_manager=manager)
    try:
        assert service("openai:gpt-x", "What is 2 + 2?").usage.cost_usd is not None  # the entry is used
        assert service("gateway:llama", "What is 2 + 2?").text == "4"
        route = service._route("gateway:llama")
        assert HEADER_SECRET not in repr(route) and HEADER_SECRET not in repr(route.adapter.settings)
    finally:
        service.close()
    assert all(r.has_api_key for r in server.requests)


@pytest.mark.parametrize(
    "entry, key",
    [
        ({"cost": {"input_cost_per_milion": 1.0}}, "model_registry.models.openai:gpt-x.cost.input_cost_per_milion"),
        ({"input_cost_per_million": 1.0}, "model_registry.models.openai:gpt-x.input_cost_per_million"),
        ({"context_window": "big"}, "model_registry.models.openai:gpt-x.context_window"),
        ({"provider": {"api_key": {"nested": "x"}}}, "model_registry.models.openai:gpt-x.provider.api_key"),
    ],
    ids=["typo-in-cost", "cost-not-nested", "bad-type", "bad-key"],
)
def test_malformed_model_entry_is_a_config_error_naming_the_path_not_the_value(server, tmp_path, entry, key):
    entry = {**entry, "api_name": PLANTED} if "provider" in entry else {**entry, "provider": {"api_key": PLANTED}}
    path = _write(tmp_path / "ember.yaml", {"model_registry": {"models": {"openai:gpt-x": entry}}})
    with pytest.raises(ConfigError) as caught:
        create_config_manager(environ={})
    assert key in caught.value.keys and key in str(caught.value) and str(path) in str(caught.value)
    assert PLANTED not in _shown(caught.value)


def test_model_entry_needs_a_provider_prefixed_id(tmp_path, server):
    _write(tmp_path / "ember.yaml", {"model_registry": {"models": {"gpt-x": {}}}})
    with pytest.raises(ConfigError, match=r"model_registry\.models\.gpt-x.*provider:name"):
        create_config_manager(environ={})


def test_registry_lists_configured_models_with_catalogue_defaults(tmp_path, server):
    _write(tmp_path / "ember.yaml", {"model_registry": {"models": {
        "openai:gpt-4o": {"rate_limit": {"max_concurrency": 3}},
        "together:llama-3": {"context_window": 8192, "provider": {"api_key": PLANTED}},
    }}})  # fmt: skip
    registry = ModelRegistry(config_manager=create_config_manager(environ={}))
    gpt = registry.get_model_info("openai:gpt-4o")
    assert gpt.rate_limit.max_concurrency == 3 and gpt.cost.input_cost_per_million == 2.5  # catalogue kept
    llama = registry.get_model_info("together:llama-3")
    assert llama.context_window == 8192 and llama.provider.api_key.get_secret_value() == PLANTED
    assert PLANTED not in repr(llama)


# --- 1. requests that can never be sent ----------------------------------------------------------


BAD_REQUESTS = [
    ("prompt", "\ud800 lone surrogate", {}),
    ("prompt[1].content", [{"role": "user", "content": "ok"}, {"role": "user", "content": "x\udc80"}], {}),
    ("system", "hi", {"system": "be brief \ud83d"}),
    ("temperature", "hi", {"temperature": math.nan}),
    ("temperature", "hi", {"temperature": 2.5}),
    ("temperature", "hi", {"temperature": "hot"}),
    ("top_p", "hi", {"top_p": 0}),
    ("top_p", "hi", {"top_p": 1.5}),
    ("max_tokens", "hi", {"max_tokens": "many"}),
    ("max_tokens", "hi", {"max_tokens": 0}),
    ("max_tokens", "hi", {"max_tokens": True}),
    ("stop", "hi", {"stop": 5}),
    ("stop[1]", "hi", {"stop": ["END", 5]}),
    ("timeout", "hi", {"timeout": -1}),
    ("timeout", "hi", {"timeout": math.inf}),
    ("seed", "hi", {"seed": 1.5}),
    ("sample_index", "hi", {"sample_index": "3"}),
    ("extra['model']", "hi", {"extra": {"model": "gpt-4o-mini"}}),
    ("extra['messages']", "hi", {"extra": {"messages": []}}),
    ("extra['max_completion_tokens']", "hi", {"extra": {"max_completion_tokens": 9}}),
    ("extra['extra_body']['model']", "hi", {"extra": {"extra_body": {"model": "other"}}}),
    ("extra['stream']", "hi", {"extra": {"stream": True}}),
    ("extra", "hi", {"extra": ["model"]}),
    ("temprature", "hi", {"temprature": 0.5}),
    ("prompt", None, {}),
]


@pytest.mark.parametrize("model_id", ["openai:gpt-4o", "anthropic:claude-3-5-haiku"])
@pytest.mark.parametrize(
    "parameter, prompt, params", BAD_REQUESTS, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD_REQUESTS)]
)
def test_request_that_can_never_be_sent_is_refused_up_front(loopback_models, model_id, parameter, prompt, params):
    with pytest.raises(InvalidRequestError) as caught:
        loopback_models.service(model_id, prompt, **params)
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, ModelError) and not error.retryable
    assert error.parameter == parameter and parameter in str(error)
    assert loopback_models.server.stats.total == 0 and loopback_models.service.stats.started == 0


@pytest.mark.parametrize("model_id", [None, "", 42])
def test_model_id_must_be_a_non_empty_string(loopback_models, model_id):
    with pytest.raises(InvalidRequestError, match="model_id must be a non-empty string"):
        loopback_models.service(model_id, "hi")
    assert loopback_models.server.stats.total == 0


def test_invalid_request_names_the_type_never_the_value(loopback_models):
    secret = "plain-secret-in-a-stop-sequence"
    with pytest.raises(InvalidRequestError) as caught:
        loopback_models.service("openai:gpt-4o", "hi", stop=[secret.encode()])
    assert "bytes" in str(caught.value) and secret not in _shown(caught.value)


def test_extra_model_cannot_send_the_request_to_another_model(loopback_models):
    with pytest.raises(InvalidRequestError, match=r"the model id \(the first argument\)"):
        loopback_models.service("openai:gpt-4o", "hi", extra={"model": "gpt-4o-mini"})
    assert loopback_models.service.usage_service.total().calls == 0


def test_valid_edge_values_still_reach_the_wire(loopback_models):
    service, server = loopback_models.service, loopback_models.server
    service("openai:gpt-4o", "héllo ✓", temperature=0, top_p=1, max_tokens=1, timeout=30, seed=-1, stop=[])
    service("openai:gpt-4o", "hi", temperature=2, extra={"frequency_penalty": 0.5, "repetition_penalty": 1.1})
    first, second = (r.body for r in server.requests)
    assert first["temperature"] == 0 and first["top_p"] == 1 and first["seed"] == -1 and "stop" not in first
    assert second["frequency_penalty"] == 0.5 and second["repetition_penalty"] == 1.1  # a server's own field


def test_unexpected_sdk_exception_is_typed_and_not_retried(loopback_models):
    from ember.models import ProviderError

    with pytest.raises(ProviderError) as caught:  # the SDK cannot serialise a set into JSON
        loopback_models.service("openai:gpt-4o", "hi", extra={"metadata": {"tags": {"a", "b"}}})
    error = caught.value
    assert "TypeError" in str(error) and not error.retryable and error.attempts == 1
    assert loopback_models.server.stats.total == 0
