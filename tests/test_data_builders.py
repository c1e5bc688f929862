"""The seven benchmark builders (tensorflow-datasets, no TensorFlow) on our own fixture files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ember.data import (
    CorruptDataFileError,
    DataService,
    MissingDataFilesError,
    RandomSampler,
    StratifiedSampler,
    UnknownDatasetError,
)
from ember.data.builders import BUILDERS

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"

# dataset -> (subset, split, number of items, a property every item must have)
EXPECTED = {
    "mmlu": ("high_school_mathematics", "test", 6, lambda i: set(i.choices) == set("ABCD")),
    "gsm8k": (None, "test", 3, lambda i: i.answer.isdigit() and "solution" in i.metadata),
    "truthfulqa": (None, "validation", 3, lambda i: len(i.choices) >= 2),
    "commonsenseqa": (None, "validation", 2, lambda i: len(i.choices) == 5),
    "halueval": (None, "test", 4, lambda i: set(i.choices.values()) == {"Yes", "No"}),
    "gpqa": ("main", "train", 3, lambda i: len(i.choices) == 4),
    "aime": (None, "test", 3, lambda i: i.answer.isdigit()),
}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A writable copy of the fixtures, so preparation and corruption stay inside the test."""
    shutil.copytree(FIXTURES, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def service(data_dir, tmp_path) -> DataService:
    return DataService(data_dir=data_dir, cache_dir=tmp_path / "cache")


def test_every_builder_is_registered():
    assert set(BUILDERS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builder_reads_its_official_format(service, name):
    subset, split, size, check = EXPECTED[name]
    data = service.load_dataset(name, subset=subset, split=split)
    items = list(data)
    assert len(data) == size == len(items)
    assert len({i.id for i in items}) == size
    assert all(check(i) and i.query and i.answer for i in items)
    for item in items:  # every multiple-choice answer names one of the options
        assert not item.choices or item.answer in item.choices


def test_known_answers_survive_preparation(service):
    gsm = {i.query[:3]: i.answer for i in service.load_dataset("gsm8k")}
    assert gsm["A s"] == "6000"  # "#### 6,000": thousands separator removed
    mmlu = next(iter(service.load_dataset("mmlu", subset="high_school_mathematics")))
    assert mmlu.query == "What is 3 + 4?" and mmlu.answer_text == "7"
    halu = {i.id: i.answer_text for i in service.load_dataset("halueval")}
    assert halu["qa/1/right"] == "No" and halu["qa/1/hallucinated"] == "Yes"
    gpqa = {i.id: i.answer_text for i in service.load_dataset("gpqa")}
    assert gpqa["main/recFX001"] == "Electron"


def test_correct_option_is_not_always_first_where_files_list_it_first(service):
    letters = {i.answer for name in ("truthfulqa", "gpqa") for i in service.load_dataset(name)}
    assert len(letters) > 1


def test_all_subsets_and_other_splits(service):
    assert len(service.load_dataset("mmlu")) == 9  # both subjects' test files
    assert len(service.load_dataset("mmlu", split="validation")) == 3
    assert len(service.load_dataset("aime", subset="2025")) == 1
    assert len(service.load_dataset("gsm8k", split="train")) == 2


def test_seed_example_runs_as_written(data_dir, tmp_path):
    from ember.config import get_config_manager
    from ember.core.utils.data.base.samplers import RandomSampler
    from ember.core.utils.data.service import DataService

    with get_config_manager().scoped({"data": {"data_dir": str(data_dir)}}):
        data_service = DataService()
        mmlu_data = data_service.load_dataset(
            dataset_name="mmlu", subset="high_school_mathematics", sampler=RandomSampler(n=100)
        )
        items = list(mmlu_data)
    assert len(items) == 6 and all(i.metadata["subject"] == "high_school_mathematics" for i in items)


def test_sampling_a_prepared_split(service):
    data = service.load_dataset("mmlu", sampler=RandomSampler(4, seed=1))
    assert len(list(data)) == 4
    strat = service.load_dataset("mmlu", sampler=StratifiedSampler(4, key=lambda i: i.metadata["subject"]))
    assert {i.metadata["subject"] for i in strat} == {"astronomy", "high_school_mathematics"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_files_list_what_is_expected_and_where_to_get_it(tmp_path, name):
    service = DataService(data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache")
    subset, split, _, _ = EXPECTED[name]
    with pytest.raises(MissingDataFilesError) as caught:
        service.load_dataset(name, subset=subset, split=split)
    message = str(caught.value)
    assert "MISSING" in message and "Get them:" in message and "http" in message
    assert caught.value.missing


def test_one_missing_file_is_named(service, data_dir):
    os.remove(data_dir / "gsm8k/grade_school_math/data/test.jsonl")
    with pytest.raises(MissingDataFilesError) as caught:
        service.load_dataset("gsm8k")
    assert caught.value.missing == ("grade_school_math/data/test.jsonl",)
    assert len(service.load_dataset("gsm8k", split="train")) == 2  # the split that is there still loads


def test_unknown_subject_and_split_suggest_known_ones(service):
    with pytest.raises(UnknownDatasetError, match="Did you mean: astronomy"):
        service.load_dataset("mmlu", subset="astronomyy")
    with pytest.raises(UnknownDatasetError, match="validation"):
        service.load_dataset("truthfulqa", split="test")


CORRUPTIONS = {
    "mmlu": ("mmlu/data/test/astronomy_test.csv", "Which planet?,a,b,c,d,Z\n", "A-D"),
    "gsm8k": ("gsm8k/grade_school_math/data/test.jsonl", '{"question": "q", "answer": "no marker"}\n', "####"),
    "truthfulqa": ("truthfulqa/data/mc_task.json", '[{"question": "q", "mc1_targets": {"a": 1, "b": 1}}]', "exactly one"),
    "commonsenseqa": ("commonsenseqa/dev_rand_split.jsonl", '{"id": "x", "answerKey": "A"}\n', "CommonsenseQA"),
    "halueval": ("halueval/data/qa_data.json", '{"knowledge": "k", "question": "q"}\n', "right_answer"),
    "gpqa": ("gpqa/dataset/gpqa_main.csv", "Question,Correct Answer\nq,a\n", "Incorrect Answer 1"),
    "aime": ("aime/aime_2024.jsonl", '{"ID": "1", "Problem": "p", "Answer": "twelve"}\n', "integer"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_files_name_file_and_problem(service, data_dir, name):
    rel, content, reason = CORRUPTIONS[name]
    (data_dir / rel).write_text(content)
    subset = "astronomy" if name == "mmlu" else None
    with pytest.raises(CorruptDataFileError) as caught:
        list(service.load_dataset(name, subset=subset))
    assert reason in str(caught.value) and Path(rel).name in str(caught.value)


def test_truncated_json_and_binary_csv(service, data_dir):
    (data_dir / "truthfulqa/data/mc_task.json").write_text('[{"question": "q", ')
    with pytest.raises(CorruptDataFileError, match="line 1"):
        service.load_dataset("truthfulqa")
    (data_dir / "gpqa/dataset/gpqa_main.csv").write_bytes(b"Question,Correct Answer\n\xff\xfe\x00\n")
    with pytest.raises(CorruptDataFileError, match="UTF-8"):
        service.load_dataset("gpqa")


def test_editing_a_file_prepares_afresh(service, data_dir):
    path = data_dir / "aime/aime_2025.jsonl"
    assert [i.answer for i in service.load_dataset("aime", subset="2025")] == ["156"]
    path.write_text('{"ID": "x", "Problem": "Compute 2 * 3.", "Answer": 6}\n')
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert [i.answer for i in service.load_dataset("aime", subset="2025")] == ["6"]


def test_prepared_cache_is_reused(service, tmp_path):
    service.load_dataset("commonsenseqa")
    prepared = sorted(p for p in (tmp_path / "cache").rglob("*.array_record*"))
    mtimes = [p.stat().st_mtime_ns for p in prepared]
    assert prepared
    service.load_dataset("commonsenseqa")
    assert [p.stat().st_mtime_ns for p in prepared] == mtimes


def test_prepared_data_is_a_plain_tfds_data_source(service, tmp_path):
    import tensorflow_datasets as tfds

    service.load_dataset("gsm8k")
    version_dir = next((tmp_path / "cache" / "gsm8k").glob("*/ember_gsm8k/main/1.0.0"))
    source = tfds.builder_from_directory(str(version_dir)).as_data_source(split="test")
    assert len(source) == 3 and source[0]["answer"] == b"12"


def test_damaged_prepared_copy_is_rebuilt(service, tmp_path):
    assert len(list(service.load_dataset("gsm8k"))) == 3
    for path in (tmp_path / "cache" / "gsm8k").rglob("*test.array_record*"):
        with open(path, "r+b") as f:
            f.truncate(100)
    assert len(list(service.load_dataset("gsm8k"))) == 3
    for path in (tmp_path / "cache" / "gsm8k").rglob("dataset_info.json"):
        path.write_text("{broken")
    assert len(list(service.load_dataset("gsm8k"))) == 3


def test_duplicate_ids_in_a_file_are_refused(service, data_dir):
    path = data_dir / "commonsenseqa/dev_rand_split.jsonl"
    path.write_text(path.read_text() + path.read_text().splitlines()[0] + "\n")
    with pytest.raises(CorruptDataFileError, match="occurs twice"):
        service.load_dataset("commonsenseqa")
