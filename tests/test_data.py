"""Data layer without tensorflow-datasets: items, samplers, transforms, validators, loaders, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.data import (
    CorruptDataFileError,
    DataLoader,
    DataService,
    Dataset,
    DatasetItem,
    DatasetRegistry,
    DatasetSpec,
    FirstNSampler,
    InvalidItemError,
    MissingDataFilesError,
    NormalizeWhitespace,
    RandomSampler,
    RequireFields,
    ShuffleChoices,
    StratifiedSampler,
    UnknownDatasetError,
    ValidChoices,
    minibench_items,
)


def _items(n: int) -> list[DatasetItem]:
    return [DatasetItem(str(i), f"q{i}", str(i), metadata={"group": i % 3}) for i in range(n)]


class _Streamed:
    """A source without random access: forces the streaming path, and counts reads."""

    def __init__(self, items: list[DatasetItem]) -> None:
        self.items, self.reads = items, 0

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for item in self.items:
            self.reads += 1
            yield item


# --- items -------------------------------------------------------------------------------


def test_item_prompt_lists_choices_and_answer_text():
    item = DatasetItem.with_options("x", "Pick one", ["red", "blue"], 1)
    assert item.answer == "B" and item.answer_text == "blue"
    assert item.prompt == "Pick one\nA. red\nB. blue"
    assert DatasetItem("y", "Free?", "yes").prompt == "Free?"


# --- samplers ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 300), n=st.integers(0, 350), seed=st.integers(0, 10))
def test_random_sampler_positions_are_sorted_distinct_and_in_range(size, n, seed):
    chosen = RandomSampler(n, seed).select(size)
    assert len(chosen) == min(n, size)
    assert np.all(np.diff(chosen) > 0) and (len(chosen) == 0 or (chosen[0] >= 0 and chosen[-1] < size))


def test_random_sampler_is_reproducible_and_nested_by_n():
    small, large = RandomSampler(50, seed=3).select(1000), RandomSampler(100, seed=3).select(1000)
    assert set(small) <= set(large)
    assert np.array_equal(small, RandomSampler(50, seed=3).select(1000))
    assert not np.array_equal(small, RandomSampler(50, seed=4).select(1000))


def test_first_n_sampler_stops_reading_early():
    source = _Streamed(_items(100))
    got = list(Dataset(source, sampler=FirstNSampler(5)))
    assert [i.id for i in got] == ["0", "1", "2", "3", "4"]
    assert source.reads <= 6


def test_streaming_and_indexed_sampling_agree():
    items = _items(200)
    sampler = RandomSampler(17, seed=1)
    indexed = [i.id for i in Dataset(items, sampler=sampler)]
    streamed = [i.id for i in Dataset(_Streamed(items), sampler=sampler)]
    assert indexed == streamed and len(indexed) == 17


def test_stratified_sampler_allocates_in_proportion_and_covers_every_stratum():
    items = [DatasetItem(str(i), "q", "a", metadata={"s": "big" if i < 80 else ("mid" if i < 95 else "tiny")}) for i in range(100)]
    sampler = StratifiedSampler(20, key=lambda item: item.metadata["s"], seed=0)
    got = list(Dataset(items, sampler=sampler))
    counts = {s: sum(i.metadata["s"] == s for i in got) for s in ("big", "mid", "tiny")}
    assert sum(counts.values()) == 20 and all(c >= 1 for c in counts.values())
    assert counts["big"] > counts["mid"] >= counts["tiny"]


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6), n=st.integers(0, 200))
def test_stratified_sampler_never_exceeds_a_stratum_and_hits_n(sizes, n):
    keys = [k for k, size in enumerate(sizes) for _ in range(size)]
    chosen = StratifiedSampler(n, key=lambda x: x, seed=0).select(len(keys), keys)
    assert len(chosen) == min(n, len(keys)) and len(set(chosen.tolist())) == len(chosen)


def test_sampler_rejects_negative_n():
    with pytest.raises(ValueError):
        RandomSampler(-1)


# --- transforms and validators ------------------------------------------------------------


def test_shuffle_choices_keeps_the_right_answer_and_is_deterministic():
    item = DatasetItem.with_options("q1", "?", ["w", "x", "y", "z"], 2)
    shuffled = ShuffleChoices(seed=5)(item)
    assert shuffled.answer_text == "y" and sorted(shuffled.choices.values()) == ["w", "x", "y", "z"]
    assert ShuffleChoices(seed=5)(item) == shuffled
    positions = {ShuffleChoices(seed=s)(item).answer for s in range(20)}
    assert len(positions) > 1


def test_normalize_whitespace():
    item = NormalizeWhitespace()(DatasetItem("1", "  a \n b ", "x", {"A": "c\t d"}))
    assert item.query == "a b" and item.choices == {"A": "c d"}


def test_validators_report_each_problem():
    assert RequireFields("query", "answer")(DatasetItem("1", " ", "")) == ["query is empty", "answer is empty"]
    problems = ValidChoices()(DatasetItem("1", "q", "E", {"A": "x", "B": ""}))
    assert any("empty choice" in p for p in problems) and any("not one of" in p for p in problems)


def test_dataset_raises_or_skips_invalid_items():
    items = [DatasetItem("good", "q", "a"), DatasetItem("bad", "q", "")]
    with pytest.raises(InvalidItemError, match="bad"):
        list(Dataset(items, validators=[RequireFields()]))
    assert [i.id for i in Dataset(items, validators=[RequireFields()], on_invalid="skip")] == ["good"]


def test_dataset_is_lazy_immutable_and_reiterable():
    base = Dataset(_items(10), name="d")
    mapped = base.map(lambda item: item.replace(query=item.query.upper())).sample(FirstNSampler(3))
    assert [i.query for i in mapped] == ["Q0", "Q1", "Q2"] == [i.query for i in mapped]
    assert len(base) == 10 and len(mapped) == 3 and base.transforms == ()


# --- generic loaders ------------------------------------------------------------------------


def test_jsonl_loader_maps_nested_fields_and_keeps_the_rest_as_metadata(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"uid": f"u{i}", "q": {"text": f"question {i}"}, "gold": i, "options": ["a", "b", "c"], "src": "x"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    loader = DataLoader(path, fields={"id": "uid", "query": "q.text", "answer": "gold", "choices": "options"})
    items = list(loader)
    assert len(loader) == 3 and [i.id for i in items] == ["u0", "u1", "u2"]
    assert items[2].query == "question 2" and items[2].answer == "C" and items[2].answer_text == "c"
    assert items[0].metadata == {"src": "x"}


def test_csv_loader_with_choice_columns(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text('question,A,B,C,answer\n"Multi\nline?",x,y,z,B\nplain,p,q,r,C\n')
    items = list(DataLoader(path, fields={"query": "question", "choices": ["A", "B", "C"]}))
    assert items[0].query == "Multi\nline?" and items[0].choices == {"A": "x", "B": "y", "C": "z"} and items[0].answer == "B"
    assert [i.id for i in items] == ["0", "1"]


def test_parquet_loader_streams_and_counts_from_the_footer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"query": [f"q{i}" for i in range(2500)], "answer": [str(i) for i in range(2500)]}), path)
    loader = DataLoader(path, sampler=RandomSampler(10, seed=2))
    items = list(loader)
    assert len(items) == 10 and all(i.answer == i.query[1:] for i in items)


def test_answer_given_as_choice_text_becomes_its_label(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "capital?", "answer": "Paris", "choices": ["Rome", "Paris"]}) + "\n")
    assert next(iter(DataLoader(path))).answer == "B"


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("bad.jsonl", '{"query": "a", "answer": "b"}\n{"query": oops}\n', 2),
        ("list.jsonl", '{"query": "a", "answer": "b"}\n[1, 2]\n', 2),
        ("short.csv", "query,answer\nq1,a1\nq2\n", 3),
        ("nofield.jsonl", '{"question": "a"}\n', 1),
    ],
)
def test_corrupt_files_name_the_file_and_line(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorruptDataFileError) as caught:
        list(DataLoader(path, validators=()))
    assert caught.value.line == line and name in str(caught.value)


def test_corrupt_parquet_and_binary_csv_are_clear_errors(tmp_path):
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(CorruptDataFileError, match="Parquet"):
        list(DataLoader(parquet))
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"query,answer\n\xff\xfe,\x00\n")
    with pytest.raises(CorruptDataFileError, match=r"x\.csv"):
        list(DataLoader(binary))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(MissingDataFilesError, match=r"nope\.jsonl"):
        DataLoader(tmp_path / "nope.jsonl")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="format"):
        DataLoader(tmp_path / "a.txt")


# --- minibench, registry, service -------------------------------------------------------------


def test_minibench_is_deterministic_mixed_and_never_echoes_an_operand():
    items = minibench_items()
    assert items == minibench_items() and len({i.id for i in items}) == len(items)
    assert {i.metadata["kind"] for i in items[:20]} == {"arithmetic", "fact"}
    for item in items:
        if item.metadata["kind"] == "arithmetic":
            operands = [w for w in item.query.rstrip("?").split() if w.isdigit()]
            assert item.answer not in operands


def test_service_loads_minibench_subsets_without_files(tmp_path):
    service = DataService(data_dir=tmp_path)
    facts = service.load_dataset("minibench", subset="facts")
    assert all(i.metadata["kind"] == "fact" for i in facts)
    with pytest.raises(UnknownDatasetError, match="arithmetic"):
        service.load_dataset("minibench", subset="algebra")
    with pytest.raises(UnknownDatasetError, match="Did you mean: minibench"):
        service.load_dataset("minibenc")


def test_custom_registry():
    spec = DatasetSpec("toy", "a toy", "short_answer", ("test",), open=lambda d, subset, split, cache: _items(4))
    registry = DatasetRegistry((spec,))
    assert "toy" in registry and registry.names() == ["toy"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(spec)
    assert len(DataService(registry, data_dir=".").load_dataset("toy", sampler=RandomSampler(2))) == 2
