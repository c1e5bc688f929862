"""ModelInfo defaults, registry discovery and resolution, usage accounting, redaction."""

import logging
import threading

import pytest

from ember._runtime import install_log_redaction, redact, register_secret
from ember.models import (
    ModelInfo,
    ModelNotFoundError,
    ModelRegistry,
    ProviderNotFoundError,
    UsageService,
    UsageStats,
)
from ember.models._errors import MissingCredentialsError, ProviderError


def test_model_info_from_id_alone_fills_provider_and_catalogue_fields():
    info = ModelInfo(id="openai:gpt-4o")
    assert info.provider.name == "openai" and info.provider["name"] == "openai"
    assert info.name == "gpt-4o" and info.api_name == "gpt-4o"
    assert info.cost.input_cost_per_million == 2.5 and info.cost.output_cost_per_million == 10.0
    assert info.context_window == 128000


def test_catalogue_maps_friendly_names_to_api_names():
    assert ModelInfo(id="anthropic:claude-3-5-sonnet").api_name == "claude-3-5-sonnet-latest"


def test_uncatalogued_model_has_unknown_price():
    info = ModelInfo(id="openai:brand-new-model")
    assert not info.cost.known
    assert info.cost.cost(1000, 1000) is None


def test_explicit_fields_win_over_catalogue():
    info = ModelInfo(id="openai:gpt-4o", cost={"input_cost_per_million": 1, "output_cost_per_million": 2})
    assert info.cost.cost(1_000_000, 1_000_000) == 3.0


@pytest.mark.parametrize("bad", ["gpt-4o", ":gpt", "openai:"])
def test_malformed_ids_are_rejected(bad):
    with pytest.raises(ValueError, match="provider:name"):
        ModelInfo(id=bad)


def test_registry_discovers_catalogue_and_lists():
    registry = ModelRegistry()
    assert registry.is_registered("openai:gpt-4o")
    assert "local:smollm2-135m-instruct" in registry.list_models()


def test_registry_register_get_unregister():
    registry = ModelRegistry(discover=False)
    assert not registry.is_registered("openai:gpt-4o")
    registry.register_model(ModelInfo(id="openai:gpt-4o", context_window=1))
    assert registry.get_model_info("openai:gpt-4o").context_window == 1
    registry.unregister_model("openai:gpt-4o")
    assert "openai:gpt-4o" not in registry


def test_known_provider_unknown_model_resolves_with_unknown_price():
    registry = ModelRegistry()
    info = registry.get_model_info("anthropic:claude-9-future")
    assert info.provider.name == "anthropic" and not info.cost.known
    assert registry.is_registered("anthropic:claude-9-future")


def test_unknown_provider_raises_typed_error_with_close_matches():
    with pytest.raises(ProviderNotFoundError) as err:
        ModelRegistry().get_model_info("opnai:gpt-4o")
    assert "openai" in err.value.close_matches
    assert "opnai" in str(err.value)


def test_id_without_provider_suggests_registered_ids():
    with pytest.raises(ModelNotFoundError) as err:
        ModelRegistry().get_model_info("gpt-4o")
    assert "openai:gpt-4o" in err.value.close_matches


def test_usage_service_totals_and_unknown_cost():
    usage = UsageService()
    usage.add_usage_record("openai:gpt-4o", UsageStats(10, 5, 0.5))
    usage.add_usage_record("openai:gpt-4o", UsageStats(1, 1, 0.25))
    usage.add_usage_record("openai:mystery", UsageStats(3, 3, None))
    assert usage.get_usage("openai:gpt-4o").cost_usd == 0.75
    assert usage.get_usage("openai:mystery").cost_usd is None
    totals = usage.total()
    assert totals.calls == 3 and totals.input_tokens == 14 and totals.output_tokens == 9
    assert totals.cost_usd is None and totals.known_cost_usd == 0.75
    assert totals.unpriced_models == ("openai:mystery",)
    usage.reset()
    assert usage.total().calls == 0


def test_usage_service_is_thread_safe():
    usage = UsageService()

    def work():
        for _ in range(1000):
            usage.add_usage_record("m:x", UsageStats(1, 2, 0.001))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert usage.get_usage("m:x").calls == 8000 and usage.get_usage("m:x").output_tokens == 16000


def test_redaction_of_registered_and_key_shaped_secrets(caplog):
    planted = "planted-secret-value-12345"
    register_secret(planted)
    install_log_redaction()
    assert planted not in redact(f"key={planted}")
    assert "sk-abcdefghijklmnopqrstuv" not in redact("Bearer sk-abcdefghijklmnopqrstuv")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("openai._base_client").debug("headers %s", {"Authorization": f"Bearer {planted}"})
    assert planted not in caplog.text
    for error in (
        ProviderError(f"boom {planted}"),
        MissingCredentialsError("openai", "OPENAI_API_KEY", "model_registry.providers.openai.api_key"),
    ):
        assert planted not in str(error) and planted not in repr(error)
