"""Does a field annotation name one of some types? Answered without fully evaluating it.

Operators decide which fields are pytree children from their annotations, and those are
often strings (``from __future__ import annotations``) naming things imported only under
``TYPE_CHECKING``. Evaluating the whole string would then fail and lose what *can* be read,
so a string is parsed and each name in it is looked up on its own: in
``list[Operator] | ModelService`` the unresolvable ``ModelService`` does not hide
``Operator``. Classes (``type[Operator]``) and callables (``Callable[[Operator], str]``)
only mention a type without holding an instance of it, so they do not count.

>>> import collections.abc
>>> mentions("collections.abc.Sequence[int] | Missing", {"collections": collections}, (int,))
True
>>> mentions("type[int]", {}, (int,))
False
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["mentions"]

_NOT_HOLDERS = (type, typing.Type, collections.abc.Callable, typing.Callable)  # noqa: UP006


def mentions(annotation: Any, namespace: Mapping[str, Any], targets: tuple[type, ...]) -> bool:
    """Whether ``annotation`` names a subclass of one of ``targets`` anywhere in it.

    String annotations are resolved in ``namespace``; a name that does not resolve counts
    as naming none of ``targets``.
    """
    if isinstance(annotation, str):
        try:
            node = ast.parse(annotation, mode="eval").body
        except SyntaxError:
            return False
        return _node_mentions(node, namespace, targets)
    if isinstance(annotation, typing.ForwardRef):
        return mentions(annotation.__forward_arg__, namespace, targets)
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return _is_subclass(annotation, targets)
    array_type = getattr(annotation, "array_type", None)  # jaxtyping's Float[Array, "n"]
    if array_type is not None and array_type is not annotation:
        return mentions(array_type, namespace, targets)
    if typing.get_origin(annotation) in _NOT_HOLDERS:
        return False
    return any(mentions(arg, namespace, targets) for arg in typing.get_args(annotation))


def _node_mentions(node: ast.expr, namespace: Mapping[str, Any], targets: tuple[type, ...]) -> bool:
    if isinstance(node, ast.Constant):  # a quoted forward reference inside the annotation
        return isinstance(node.value, str) and mentions(node.value, namespace, targets)
    if isinstance(node, (ast.Name, ast.Attribute)):
        resolved = _resolve(node, namespace)
        return not isinstance(resolved, str) and mentions(resolved, namespace, targets)
    if isinstance(node, ast.Subscript):
        if _resolve(node.value, namespace) in _NOT_HOLDERS:
            return False
        return _node_mentions(node.value, namespace, targets) or _node_mentions(node.slice, namespace, targets)
    if isinstance(node, ast.BinOp):  # X | Y
        return _node_mentions(node.left, namespace, targets) or _node_mentions(node.right, namespace, targets)
    if isinstance(node, (ast.Tuple, ast.List)):
        return any(_node_mentions(elt, namespace, targets) for elt in node.elts)
    return False


def _resolve(node: ast.expr, namespace: Mapping[str, Any]) -> Any:
    """The object a name or dotted name refers to, or ``None`` when it does not resolve."""
    if isinstance(node, ast.Name):
        return namespace[node.id] if node.id in namespace else vars(builtins).get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _is_subclass(cls: type, targets: tuple[type, ...]) -> bool:
    try:
        return issubclass(cls, targets)
    except TypeError:  # a class whose metaclass refuses subclass checks
        return False
