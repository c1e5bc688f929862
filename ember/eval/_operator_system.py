"""Placeholder until ember.non lands."""
def is_compact_notation(s): return False
def is_operator(x): return False
class OperatorSystem: ...
