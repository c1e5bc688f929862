"""Compact NON notation: what it builds, errors that point at the bad token, and fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.api import non
from ember.operators import JudgeSynthesis, MostCommon, Parallel, SelectBest, Sequential, Synthesis, Verifier


def kinds(op):
    """The operator tree as nested class names."""
    if isinstance(op, Sequential):
        return [kinds(o) for o in op.operators]
    if isinstance(op, Parallel):
        return {"Parallel": [kinds(b) for b in op.branches]}
    return type(op).__name__


def test_the_seed_example_builds_ensemble_then_judge():
    graph = non.build_graph(["3:E:openai:gpt-4o:0.7", "1:J:anthropic:claude-3-5-sonnet:0.0"])
    ensemble, judge = graph.operators
    assert ensemble.num_units == 3 and {(lm.model_name, lm.temperature) for lm in ensemble.lm_modules} == {
        ("openai:gpt-4o", 0.7)
    }
    assert isinstance(judge, JudgeSynthesis)
    assert (judge.model_name, judge.temperature) == ("anthropic:claude-3-5-sonnet", 0.0)


@pytest.mark.parametrize(
    ("notation", "expected"),
    [
        ("5:E:openai:gpt-4o:1", "UniformEnsemble"),
        ("1:MC", "MostCommon"),
        (["2:E:m:0.5", "1:MC"], ["UniformEnsemble", "MostCommon"]),
        (["1:J:m:0", "1:S:m:0", "1:B:m:0", "1:V:m:.5"], ["JudgeSynthesis", "Synthesis", "SelectBest", "Verifier"]),
        # adjacent ensembles pool their samples for the next stage
        (
            ["3:E:a:0.7", "2:E:b:0.3", "1:J:c:0"],
            [{"Parallel": ["UniformEnsemble", "UniformEnsemble"]}, "JudgeSynthesis"],
        ),
        # sub-networks are branches; their final answers are the candidates
        (
            [["3:E:a:0.7", "1:J:a:0"], ["3:E:b:0.7", "1:MC"], "1:J:c:0"],
            [
                {"Parallel": [["UniformEnsemble", "JudgeSynthesis"], ["UniformEnsemble", "MostCommon"]]},
                "JudgeSynthesis",
            ],
        ),
        ([["1:J:a:0"], "1:V:a:0"], [{"Parallel": ["JudgeSynthesis"]}, "Verifier"]),
        (("1:MC",), "MostCommon"),
    ],
)
def test_notation_builds_the_described_structure(notation, expected):
    assert kinds(non.build_graph(notation)) == expected


def test_named_references_expand_in_place_and_nest():
    components = {
        "gen": "3:E:openai:gpt-4o:0.9",
        "judged": ["$gen", "1:J:openai:gpt-4o:0"],
        "check": "1:V:anthropic:claude-3-5-sonnet:0",
    }
    graph = non.build_graph(["$judged", "$judged", "1:S:openai:gpt-4o:0", "$check"], components=components)
    assert kinds(graph) == [
        {"Parallel": [["UniformEnsemble", "JudgeSynthesis"], ["UniformEnsemble", "JudgeSynthesis"]]},
        "Synthesis",
        "Verifier",
    ]


def test_model_service_reaches_every_model_backed_operator():
    sentinel = object()
    graph = non.build_graph(["2:E:m:0.1", "1:J:m:0"], model_service=sentinel)
    assert graph.operators[0].lm_modules[0].model_service is sentinel
    assert graph.operators[1].model_service is sentinel


@pytest.mark.parametrize(
    ("notation", "where", "reason", "caret"),
    [
        ("x:E:m:0.7", "graph", "COUNT must be a positive integer", "^"),
        ("0:E:m:0.7", "graph", "between 1 and 1024", "^"),
        ("3:Q:openai:gpt-4o:0.7", "graph", "unknown TYPE 'Q'", "  ^"),
        ("3:J:openai:gpt-4o:0.7", "graph", "COUNT must be 1 for type J", "^"),
        ("3:E:openai:gpt-4o", "graph", "TEMP must be a number from 0 to 2, got 'gpt-4o'", "           ^~~~~~"),
        ("3:E:m:2.5", "graph", "TEMP must be a number from 0 to 2", "      ^~~"),
        ("3:E:m:-1", "graph", "TEMP must be a number", "      ^~"),
        ("3:E:m", "graph", "needs MODEL and TEMP", "     ^"),
        ("3", "graph", "missing TYPE", " ^"),
        ("1:MC:m:0", "graph", "MC takes no MODEL or TEMP", "     ^~~"),
        ("3:E:open ai:gpt:0.7", "graph", "MODEL 'open ai:gpt' has character ' '", "    ^~~~~~~~~~~"),
        ("3:E:openai::0.7", "graph", "has an empty part", "    ^~~~~~~"),
        (["1:MC", ["1:J:m:0", "3:E:m:x"]], "graph[1][1]", "TEMP must be", "      ^"),
        (["1:MC", []], "graph[1]", "empty pipeline", None),
        (["1:MC", 7], "graph[1]", "expected a node string or a list, got int", None),
        (["$nope"], "graph[0]", "unknown reference $nope", "^~~~~"),
    ],
)
def test_errors_point_at_the_offending_token(notation, where, reason, caret):
    with pytest.raises(non.NotationError) as info:
        non.build_graph(notation)
    error = info.value
    assert error.where == where and reason in error.reason
    if caret is not None:
        node, marker = str(error).splitlines()[1:3]
        assert marker == "    " + caret, str(error)
        assert node.strip() == error.node


def test_reference_errors_cycles_and_depth():
    with pytest.raises(non.NotationError, match=r"did you mean \$judge"):
        non.build_graph(["$judg"], components={"judge": "1:J:m:0"})
    with pytest.raises(non.NotationError, match=r"cyclic reference \$a -> \$b -> \$a"):
        non.build_graph(["$a"], components={"a": ["$b"], "b": ["1:MC", "$a"]})
    deep = "1:MC"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(non.NotationError, match="nested deeper than 32"):
        non.build_graph(deep)
    with pytest.raises(non.NotationError, match="components must be a mapping"):
        non.build_graph("1:MC", components=["not", "a", "mapping"])


# -- fuzzing: nothing but NotationError escapes -----------------------------------------
# Mostly well-formed parts, so fuzzing reaches deep structures, with malformed ones mixed in.
counts = st.one_of(st.just("1"), st.sampled_from(["3", "01", "0", "1025", "x", "", " 1", "\u0663", "+2"]))
types = st.one_of(st.sampled_from(["E", "J", "V", "S", "B", "MC"]), st.sampled_from(["Q", "e", ""]))
models = st.one_of(
    st.just("openai:gpt-4o"), st.lists(st.sampled_from(["m", "", "a b", "\t"]), max_size=3).map(":".join)
)
temps = st.one_of(st.sampled_from(["0", "0.7", "2", ".5", "1."]), st.sampled_from(["2.5", "-1", "1e3", "nan", ""]))
nodes = st.one_of(
    st.tuples(counts, types, models, temps).map(":".join),
    st.tuples(counts, types).map(":".join),
    st.sampled_from(["$a", "$b", "$c", "$", "$zz"]),
    st.text(max_size=12),
)
leaves = st.one_of(nodes, st.sampled_from([None, 3, 1.5, b"3:E", {"k": 1}]))
notation = st.recursive(
    leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner)), max_leaves=12
)
valid_nodes = st.one_of(
    st.tuples(
        st.sampled_from(["1", "2", "5"]), st.just("E"), st.sampled_from(["openai:gpt-4o", "m"]), st.just("0.5")
    ).map(":".join),
    st.sampled_from(["1:J:m:0", "1:V:m:0", "1:S:m:1", "1:B:m:2", "1:MC", "$a", "$b"]),
)
valid = st.recursive(valid_nodes, lambda inner: st.lists(inner, min_size=1, max_size=4), max_leaves=10)
notation = st.one_of(valid, notation)
components = st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c"]), notation, max_size=3))


@settings(max_examples=400, deadline=None)
@given(graph=notation, components=components)
def test_fuzzed_notation_builds_an_operator_or_raises_notation_error(graph, components):
    try:
        op = non.build_graph(graph, components=components)
    except non.NotationError as error:
        assert error.where and str(error)
    else:
        assert isinstance(
            op, (Sequential, Parallel, non.UniformEnsemble, JudgeSynthesis, Synthesis, SelectBest, Verifier, MostCommon)
        )


@pytest.mark.parametrize(
    ("text", "reason", "caret"),
    [
        ('["3:E:m:0.7", 1:MC]', "invalid syntax (quote every node", "               ^"),
        ('["3:E:m:0.7", "1:MC"', "'[' was never closed", "^"),
        ('["3:E:m:0.7", "1:MC")', "closing parenthesis ')' does not match", "                    ^"),
        ('["3:E:m:0.7", model]', "found Name", "              ^~~~~"),
        ('["3:E:m:0.7", "1:" + "MC"]', "found BinOp", "              ^~~~~~~~~~~"),
        ('["é", f(1)]', "found Call", "      ^~~~"),
    ],
)
def test_list_literal_errors_point_at_the_column(text, reason, caret):
    with pytest.raises(non.NotationError) as info:
        non.parse_notation(text)
    node, marker = str(info.value).splitlines()[1:3]
    assert reason in info.value.reason and node.strip() == text and marker == "    " + caret, str(info.value)


def test_count_colon_anything_is_notation_so_a_bad_type_is_reported_as_such():
    assert non.is_notation("1:X:openai:gpt-4o:0.5") and non.is_notation("12:") and not non.is_notation("openai:gpt-4o")
    with pytest.raises(non.NotationError, match="unknown TYPE 'X'") as info:
        non.build_graph(non.parse_notation("1:X:openai:gpt-4o:0.5"))
    assert str(info.value).splitlines()[2] == "      ^"
