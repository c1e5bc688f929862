"""The execution engine: graphs of operators, schedulers, jit and autograph (being built)."""

__all__: list[str] = []
