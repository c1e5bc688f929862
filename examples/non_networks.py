"""Networks of networks, offline: compact notation, a learned vote, and how many calls to make.

The models answer from Ember's loopback server (``ember.testing``) with 100 ms of latency,
through the same SDK calls a real provider gets. Judges are scripted to answer in JSON.
"""

import json
import os

import numpy as np

from ember.testing import LoopbackServer, default_responder


def responder(request) -> str:
    prompt = request.last_user_message
    if prompt.startswith("You are a judge"):
        return json.dumps({"reasoning": "Every candidate computes 17 * 23 = 391.", "final_answer": "391"})
    return default_responder(request)  # exact arithmetic


def main() -> None:
    with LoopbackServer(latency=0.1, responder=responder) as server:
        os.environ.update(server.environ())  # OPENAI_/ANTHROPIC_ BASE_URL and API_KEY
        print(f"NOTE: answers come from Ember's loopback server at {server.url}, not a real provider.\n")
        from ember.api import non

        # 1. Compact notation builds a runnable network: 8 samples in flight at once, then a judge.
        network = non.build_graph(["8:E:openai:gpt-4o:0.7", "1:J:anthropic:claude-3-5-sonnet:0.0"])
        result = network(inputs={"query": "What is 17 * 23?"})
        print(f"judge: {result.final_answer!r} ({result.reasoning})")
        print(f"server: {server.stats.total} requests, at most {server.stats.max_in_flight} in flight at once")

        # 2. A learned vote: members differ in reliability; fit per-member logits with optax.
        rng = np.random.default_rng(0)
        reliability = np.array([0.85, 0.5, 0.45, 0.4, 0.4])
        labels = rng.choice(list("ABCD"), size=600)
        right = rng.random((600, 5)) < reliability
        decoy = np.array([{"A": "B", "B": "C", "C": "D", "D": "A"}[label] for label in labels])
        answers = np.where(right, labels[:, None], decoy[:, None]).tolist()
        vote = non.WeightedVote.uniform(5).fit(answers[:200], labels[:200].tolist())
        held_out = list(zip(answers[200:], labels[200:]))
        learned = np.mean([vote(responses=row).final_answer == label for row, label in held_out])
        plain = np.mean([non.MostCommon()(responses=row).final_answer == label for row, label in held_out])
        print(f"\nweights {np.round(vote.weights, 2)}: held-out accuracy {learned:.2f} vs majority vote {plain:.2f}")

        # 3. How many calls? Estimated from 20 labelled samples per item (Chen et al., 2024).
        p = np.where(rng.random(400) < 0.6, 0.8, 0.35)
        estimate = non.estimate_num_calls(rng.random((400, 20)) < p[:, None], max_calls=40)
        curve = ", ".join(f"{k}: {estimate.accuracy[k - 1]:.3f}" for k in (1, 3, estimate.best_num_calls, 15, 40))
        print(f"\npredicted Vote accuracy by calls -> {curve}; best: {estimate.best_num_calls} calls")


if __name__ == "__main__":
    main()
