"""Quick start: Ember's model layer end to end, offline.

The ``openai:*`` and ``anthropic:*`` calls go to Ember's loopback provider server
(``ember.testing``), which speaks the OpenAI and Anthropic wire formats on 127.0.0.1 —
the same SDK calls, retries and accounting a real provider would get. It shows:

- one call to each provider, with its text, tokens, cost, latency and attempts; the
  server answers the second request with a 429, so the Anthropic call is retried after
  the ``Retry-After`` wait;
- eight concurrent calls through ``service.submit``;
- the usage totals the service kept.

Without the server, and with ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` set, the same
service calls reach the real providers. For the embedded local model, which needs neither, see
``examples/eval_demo.py`` and ``local:smollm2-135m-instruct``.

    python examples/quickstart.py
"""

import os

from ember.testing import Fault, LoopbackServer


def main() -> None:
    # Request 1 (the second) gets a 429 with Retry-After: 0.2 s.
    with LoopbackServer(latency=0.05, faults=[Fault.rate_limit(retry_after=0.2, on=[1])]) as server:
        os.environ.update(server.environ())  # OPENAI_/ANTHROPIC_ BASE_URL and API_KEY
        print(f"NOTE: answers come from Ember's loopback server at {server.url}, not a real provider.\n")
        from ember import initialize_ember

        service = initialize_ember()
        for model_id, prompt in [("openai:gpt-4o", "What is 17 + 25?"), ("anthropic:claude-3-5-sonnet", "Hello Claude")]:
            response = service(model_id, prompt, temperature=0)
            cost = "unknown" if response.usage.cost_usd is None else f"${response.usage.cost_usd:.6f}"
            print(f"{model_id:<30} -> {response.text!r}  ({response.usage.total_tokens} tokens, {cost},"
                  f" {response.latency_s * 1000:.0f} ms, {response.attempts} attempt(s))")
        futures = [service.submit("openai:gpt-4o", f"What is {i} * {i}?") for i in range(8)]
        print("8 concurrent calls ->", [f.result().text for f in futures])
        print(f"server saw {server.stats.total} requests, at most {server.stats.max_in_flight} at once")
        totals = service.usage_service.total()
        print(f"total: {totals.calls} calls, {totals.total_tokens} tokens, ${totals.known_cost_usd:.6f}")
        service.close()


if __name__ == "__main__":
    main()
