"""Router: send the inputs to one of several operators, chosen per call.

The selector is any function of the validated inputs that returns a route name -- a
field lookup, a keyword rule, or a call to a classifier operator -- so routing policy
stays separate from the routes. Only the chosen route runs.

Offline, with Ember's loopback server (:mod:`ember.testing`) in place of the provider:

>>> import os
>>> from ember.testing import LoopbackServer
>>> server = LoopbackServer().start()
>>> os.environ.update(server.environ())
>>> from ember.api import non
>>> math_net = non.build_graph(["5:E:openai:gpt-4o:0.7", "1:MC"])  # five samples, majority vote
>>> chat_net = non.build_graph(["1:E:openai:gpt-4o-mini:0.0", "1:MC"])
>>> router = Router(routes={"math": math_net, "chat": chat_net},
...                 selector=lambda inputs: "math" if any(c.isdigit() for c in inputs.query) else "chat")
>>> router(query="What is 17 * 23?").final_answer, server.stats.total
('391', 5)
>>> server.close()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ember.operators._errors import RoutingError
from ember.operators._operator import Operator
from ember.operators._registry import register_operator

__all__ = ["Router"]


@register_operator
class Router(Operator[Any, Any]):
    """Run ``routes[selector(inputs)]`` on the inputs."""

    routes: Mapping[str, Operator]
    selector: Callable[[Any], str]

    def __post_init__(self) -> None:
        self.routes = dict(self.routes)
        if not self.routes or not all(isinstance(op, Operator) for op in self.routes.values()):
            raise ValueError("Router needs a non-empty mapping of route names to operators")
        if not callable(self.selector):
            raise TypeError(f"selector must be callable, got {self.selector!r}")

    def forward(self, *, inputs: Any) -> Any:
        name = self.selector(inputs)
        route = self.routes.get(name)
        if route is None:
            raise RoutingError(f"selector chose {name!r}; routes are: {', '.join(map(repr, self.routes))}")
        return route(inputs=inputs)
