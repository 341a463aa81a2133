"""Datasets: every bad file is refused up front with a message naming the file, the rows and the fix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from promptopt_dagster.app.datasets import (
    COLUMNS,
    DatasetSpec,
    DatasetSplits,
    load_manifest,
    load_splits,
    read_split,
    sample_rows,
)
from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.core.errors import DatasetError, ManifestError
from promptopt_dagster.core.prompts import PromptVersion

DATA_DIR = PROJECT_ROOT / "data"
HEADER = "user_input,ground_truth_output\n"
LABELS = ["positive", "negative"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, labels=None) -> str:
    with pytest.raises(DatasetError) as info:
        read_split(path, labels)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


# --- read_split --------------------------------------------------------------------------------


def test_read_split_good_file(tmp_path):
    path = write(tmp_path / "ok.csv", HEADER + 'great film,positive\n"bad, very bad",negative\nfine,Positive \n')
    frame = read_split(path, LABELS)
    assert list(frame.columns) == ["row_id", *COLUMNS]
    assert frame["row_id"].tolist() == [0, 1, 2]
    assert frame["user_input"].tolist() == ["great film", "bad, very bad", "fine"]


def test_read_split_ignores_extra_columns(tmp_path):
    path = write(tmp_path / "extra.csv", "id,user_input,ground_truth_output\n7,a,positive\n8,b,negative\n")
    frame = read_split(path)
    assert list(frame.columns) == ["row_id", *COLUMNS]
    assert frame["user_input"].tolist() == ["a", "b"]


def test_missing_column(tmp_path):
    path = write(tmp_path / "nolabel.csv", "user_input,label\nhello,positive\n")
    msg = refused(path)
    assert "missing the column(s) ground_truth_output" in msg
    assert "found: user_input, label" in msg
    assert "header `user_input,ground_truth_output`" in msg


def test_empty_file_without_header(tmp_path):
    path = write(tmp_path / "empty.csv", "")
    msg = refused(path)
    assert "user_input, ground_truth_output" in msg and "found: none" in msg
    assert "header `user_input,ground_truth_output`" in msg


def test_header_only(tmp_path):
    path = write(tmp_path / "header.csv", HEADER)
    msg = refused(path)
    assert "header but no rows" in msg and "Add labeled examples" in msg


def test_blank_fields_give_row_numbers(tmp_path):
    path = write(tmp_path / "blank.csv", HEADER + "good,positive\n   ,negative\nno label,\nfine,positive\nshort row\n")
    msg = refused(path)
    assert "an empty user_input in data row(s) 2 and an empty ground_truth_output in data row(s) 3, 5." in msg
    assert "Fill them in or delete those rows" in msg


def test_duplicated_inputs_give_row_numbers(tmp_path):
    path = write(tmp_path / "dupes.csv", HEADER + "a,positive\nb,negative\na,positive\nc,negative\nb,positive\n")
    msg = refused(path)
    assert "repeats the same user_input in data row(s) 3, 5." in msg
    assert "Delete the repeats" in msg


def test_many_bad_rows_are_truncated(tmp_path):
    rows = "".join(f"text {i},maybe\n" for i in range(15))
    path = write(tmp_path / "many.csv", HEADER + rows)
    msg = refused(path, LABELS)
    assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 (and 5 more)" in msg


def test_label_outside_label_set(tmp_path):
    path = write(tmp_path / "labels.csv", HEADER + "a,positive\nb,neutral\nc,NEGATIVE\nd,pos\n")
    msg = refused(path, LABELS)
    assert "labels outside ['positive', 'negative']" in msg
    assert "data row(s) 2, 4." in msg
    assert "labels:" in msg and "manifest.yaml" in msg


def test_free_form_outputs_accept_any_label(tmp_path):
    path = write(tmp_path / "free.csv", HEADER + "a,anything\nb,goes\n")
    assert len(read_split(path, [])) == 2
    assert len(read_split(path, None)) == 2


def test_missing_file(tmp_path):
    path = tmp_path / "does" / "not" / "exist.csv"
    msg = refused(path)
    assert "does not exist" in msg and "manifest.yaml" in msg
    assert "user_input,ground_truth_output" in msg


def test_malformed_csv(tmp_path):
    path = write(tmp_path / "commas.csv", HEADER + "a,positive\nb, with comma,negative\n")
    msg = refused(path)
    assert "not valid CSV: line 3 has 3 fields where the header has 2." in msg and "Quote fields" in msg
    assert "Error tokenizing" not in msg and "C error" not in msg  # our words, not pandas'
    unclosed = write(tmp_path / "quote.csv", HEADER + 'a,positive\n"b unclosed,negative\nc,positive\n')
    assert "a quoted field that starts on line 3 is never closed" in refused(unclosed)


def test_not_utf8_names_the_line_and_the_fix(tmp_path):
    # Latin-1 from a spreadsheet: the é of "café" is the single byte 0xe9. Line 1 is the header.
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + b'great film,positive\n"a \n quoted break",negative\ncaf\xe9 noir,positive\n')
    msg = refused(path)
    assert "not UTF-8" in msg and "line 5 " in msg and "0xe9" in msg
    assert "Re-save it as UTF-8" in msg and "iconv -f latin1 -t utf-8" in msg and "CSV UTF-8" in msg
    assert "\n" not in msg


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "caf\u00e9 noir,positive\nbad,negative\n").encode("utf-8"))
    frame = read_split(path, LABELS)
    assert list(frame.columns) == ["row_id", *COLUMNS]
    assert frame["user_input"].tolist() == ["caf\u00e9 noir", "bad"]


# --- load_splits -------------------------------------------------------------------------------


def make_spec(tmp_path: Path, train: str, dev: str, test: str, labels=LABELS) -> DatasetSpec:
    for split, text in (("train", train), ("dev", dev), ("test", test)):
        write(tmp_path / "toy" / f"{split}.csv", HEADER + text)
    return DatasetSpec(
        name="toy",
        files={s: f"toy/{s}.csv" for s in ("train", "dev", "test")},
        labels=labels,
        initial_prompt="toy.json",
    )


def test_load_splits_good(tmp_path):
    spec = make_spec(tmp_path, "a,positive\nb,negative\n", "c,positive\n", "d,negative\ne,positive\n")
    splits = load_splits(spec, tmp_path)
    assert splits.name == "toy"
    assert splits.train["user_input"].tolist() == ["a", "b"]
    assert splits.split("dev")["user_input"].tolist() == ["c"]
    assert splits.test["row_id"].tolist() == [0, 1]


def test_same_input_in_two_splits(tmp_path):
    spec = make_spec(
        tmp_path,
        "a,positive\nshared one,negative\nshared two,positive\n",
        "c,positive\n",
        "shared two,positive\nshared one,negative\nd,negative\n",
    )
    with pytest.raises(DatasetError) as info:
        load_splits(spec, tmp_path)
    msg = str(info.value)
    assert "'toy'" in msg
    assert "2 user_input value(s)" in msg
    assert "toy/train.csv" in msg and "toy/test.csv" in msg and "toy/dev.csv" not in msg
    assert "'shared one'" in msg or "'shared two'" in msg
    assert "delete them from one file" in msg


def test_load_splits_checks_each_file(tmp_path):
    spec = make_spec(tmp_path, "a,positive\n", "b,bogus\n", "c,negative\n")
    with pytest.raises(DatasetError) as info:
        load_splits(spec, tmp_path)
    assert str(tmp_path / "toy" / "dev.csv") in str(info.value)
    assert "labels outside" in str(info.value) and "data row(s) 1." in str(info.value)


def test_load_splits_missing_file(tmp_path):
    spec = make_spec(tmp_path, "a,positive\n", "b,negative\n", "c,negative\n")
    (tmp_path / "toy" / "test.csv").unlink()
    with pytest.raises(DatasetError) as info:
        load_splits(spec, tmp_path)
    assert str(tmp_path / "toy" / "test.csv") in str(info.value)
    assert "does not exist" in str(info.value)


# --- manifest ----------------------------------------------------------------------------------


def manifest_refused(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


def test_manifest_missing(tmp_path):
    msg = manifest_refused(tmp_path / "manifest.yaml")
    assert "does not exist" in msg and "datasets:" in msg


@pytest.mark.parametrize(
    "text", ["", "# nothing\n", "datasets:\n", "datasets: {}\n", "datasets: [a, b]\n", "scorers: {}\n"]
)
def test_manifest_without_datasets(tmp_path, text):
    msg = manifest_refused(write(tmp_path / "manifest.yaml", text))
    assert "no `datasets:` mapping" in msg and "Add one entry per dataset" in msg


def test_manifest_unknown_top_level_key(tmp_path):
    msg = manifest_refused(write(tmp_path / "manifest.yaml", "dataset:\n  toy: {}\n"))
    assert "dataset: not a known key; did you mean 'datasets'?" in msg


def test_manifest_missing_split(tmp_path):
    path = write(
        tmp_path / "manifest.yaml",
        "datasets:\n  toy:\n    files: {train: t.csv, dev: d.csv}\n    initial_prompt: toy.json\n",
    )
    msg = manifest_refused(path)
    assert "datasets.toy.files" in msg and "split(s) test" in msg and "under `files:`" in msg


def test_label_descriptions_must_describe_labels_the_dataset_has(tmp_path):
    entry = (
        "datasets:\n  toy:\n    files: {train: t.csv, dev: d.csv, test: e.csv}\n    initial_prompt: toy.json\n"
        "    labels: [ham, spam]\n"
    )
    path = write(tmp_path / "manifest.yaml", entry + "    label_descriptions: {spam: unsolicited ads, Spam: typo}\n")
    msg = manifest_refused(path)
    assert "datasets.toy:" in msg and "'Spam'" in msg and "not in labels" in msg and "spelled as in `labels`" in msg
    ok = write(tmp_path / "ok.yaml", entry + "    label_descriptions: {spam: unsolicited ads}\n")
    assert load_manifest(ok)["toy"].label_descriptions == {"spam": "unsolicited ads"}


def test_manifest_entry_missing_required_field(tmp_path):
    path = write(tmp_path / "manifest.yaml", "datasets:\n  toy:\n    files: {train: a, dev: b, test: c}\n")
    msg = manifest_refused(path)
    assert "datasets.toy.initial_prompt: required" in msg


def test_manifest_empty_entry(tmp_path):
    msg = manifest_refused(write(tmp_path / "manifest.yaml", "datasets:\n  toy:\n"))
    assert "datasets.toy.files: required" in msg


def test_manifest_good_defaults(tmp_path):
    path = write(
        tmp_path / "manifest.yaml",
        "datasets:\n  toy:\n    files: {train: a, dev: b, test: c}\n    initial_prompt: toy.json\n",
    )
    spec = load_manifest(path)["toy"]
    assert spec.name == "toy" and spec.labels == [] and spec.target_metric == "accuracy"
    assert spec.max_output_tokens == 8


# --- the shipped data --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    specs = load_manifest(DATA_DIR / "manifest.yaml")
    return specs, {name: load_splits(specs[name], DATA_DIR) for name in ("sst2", "sms_spam", "hwu64")}


def test_shipped_manifest(shipped):
    specs, _ = shipped
    assert {"sst2", "sms_spam"} <= set(specs)
    assert specs["sst2"].labels == ["positive", "negative"]
    assert specs["sms_spam"].labels == ["ham", "spam"]
    for spec in specs.values():
        assert (PROJECT_ROOT / "prompts" / spec.initial_prompt).exists()


@pytest.mark.parametrize("name", ["sst2", "sms_spam", "hwu64"])
def test_shipped_splits(shipped, name):
    splits = shipped[1][name]
    inputs = {}
    for split in ("train", "dev", "test"):
        frame = splits.split(split)
        assert len(frame) > 0
        assert list(frame.columns) == ["row_id", *COLUMNS]
        assert frame["row_id"].tolist() == list(range(len(frame)))
        assert frame["user_input"].is_unique
        inputs[split] = set(frame["user_input"])
    assert not inputs["train"] & inputs["dev"]
    assert not inputs["train"] & inputs["test"]
    assert not inputs["dev"] & inputs["test"]


def test_hwu64_is_the_many_label_set_and_every_answer_is_one_of_its_labels(shipped):
    """hwu64 is the set that checks label lists, ranking and demos at 64 labels: the manifest lists all of them
    (read_split refuses an answer outside the list), every label has train rows for a demo, and the scorers
    are atis_intent's (macro F1 the target, accuracy reported)."""
    specs, splits = shipped
    spec, frames = specs["hwu64"], splits["hwu64"]
    assert len(spec.labels) == len(set(spec.labels)) == 64
    assert [len(frames.split(s)) for s in ("train", "dev", "test")] == [9533, 500, 1000]
    for split in ("train", "dev", "test"):
        assert set(frames.split(split)["ground_truth_output"]) <= set(spec.labels)
    assert set(frames.split("train")["ground_truth_output"]) == set(spec.labels)
    assert spec.target_metric == "f1"
    assert [(s.name, s.weight) for s in spec.scorers] == [("f1", 1.0), ("accuracy", 0.0)]
    assert spec.max_output_tokens >= 6  # the longest labels are 6 Gemma tokens after the space
    prompt = PromptVersion.load(PROJECT_ROOT / "prompts" / spec.initial_prompt)
    assert all(label in prompt.system_prompt for label in spec.labels)


# --- sampling and the long table ---------------------------------------------------------------


def toy_frame(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_id": range(n),
            "user_input": [f"text {i}" for i in range(n)],
            "ground_truth_output": ["positive" if i % 2 else "negative" for i in range(n)],
        }
    )


def test_sample_rows_seeded_stable_and_sorted():
    frame = toy_frame()
    a = sample_rows(frame, 10, seed=7)
    b = sample_rows(frame.copy(), 10, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 10
    assert a["row_id"].is_monotonic_increasing and a["row_id"].is_unique
    assert a.index.tolist() == list(range(10))
    assert set(a["row_id"]) <= set(frame["row_id"])
    # The row's content stays with its id.
    assert all(a["user_input"] == "text " + a["row_id"].astype(str))
    # A different seed gives a different subset.
    assert set(sample_rows(frame, 10, seed=8)["row_id"]) != set(a["row_id"])


def test_sample_rows_on_shipped_data_is_stable(shipped):
    dev = shipped[1]["sst2"].dev
    first = sample_rows(dev, 25, seed=0)
    second = sample_rows(dev, 25, seed=0)
    pd.testing.assert_frame_equal(first, second)
    assert first["row_id"].is_monotonic_increasing


@pytest.mark.parametrize("size", [None, 0, -3, 50, 500])
def test_sample_rows_all_when_size_not_smaller(size):
    frame = toy_frame().iloc[::-1]  # a non-default index
    out = sample_rows(frame, size, seed=1)
    assert len(out) == 50
    assert out.index.tolist() == list(range(50))
    assert out["row_id"].tolist() == frame["row_id"].tolist()


def test_to_frame_from_frame_round_trip(tmp_path):
    spec = make_spec(tmp_path, "a,positive\nb,negative\n", "c,positive\n", "d,negative\ne,positive\nf,negative\n")
    splits = load_splits(spec, tmp_path)
    long = splits.to_frame()
    assert list(long.columns) == ["dataset", "split", "row_id", "user_input", "ground_truth_output"]
    assert len(long) == 6
    assert (long["dataset"] == "toy").all()
    assert long["split"].tolist() == ["train", "train", "dev", "test", "test", "test"]

    back = DatasetSplits.from_frame("toy", long.sample(frac=1, random_state=3))  # order of the table is irrelevant
    assert back.name == "toy"
    for split in ("train", "dev", "test"):
        expected = splits.split(split)
        got = back.split(split).sort_values("row_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_to_frame_from_frame_round_trip_shipped(shipped):
    splits = shipped[1]["sms_spam"]
    back = DatasetSplits.from_frame("sms_spam", splits.to_frame())
    for split in ("train", "dev", "test"):
        pd.testing.assert_frame_equal(back.split(split), splits.split(split))
