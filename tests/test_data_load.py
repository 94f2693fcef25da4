"""data_utils.load: every input format, every task schema, column mapping, samples, files left untouched."""

from __future__ import annotations

import gzip
import json
import pickle

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from data_utils import SCHEMAS, label_names_from_dataset, load, sample_path
from data_utils.samples import sample_names


def write(path, content) -> str:
    """Write text (UTF-8) or bytes to ``path``; return it as a string."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def records(dataset: Dataset) -> list[dict]:
    return dataset.to_list()


PAIRS_ROWS = [
    {"anchor": "what is a cat", "positive": "a small pet"},
    {"anchor": "what is rain", "positive": "water"},
]


# ---------------------------------------------------------------- formats


def test_csv_keeps_na_null_and_numbers_as_text(tmp_path):
    path = write(tmp_path / "d.csv", 'text,other\nNA,1\nnull,x\n1.0,y\n"a, quoted ""one""",z\n')
    dataset = load(path)
    assert dataset.column_names == ["text", "other"]
    assert dataset["text"][:] == ["NA", "null", "1.0", 'a, quoted "one"']
    assert dataset["other"][:] == ["1", "x", "y", "z"]


def test_tsv_and_sep_option_read_the_same_table(tmp_path):
    tsv = write(tmp_path / "d.tsv", "a\tb\nx, y\tz\n")
    other = write(tmp_path / "d.csv", "a;b\nx, y;z\n")
    assert records(load(tsv)) == [{"a": "x, y", "b": "z"}]
    assert records(load(other, sep=";")) == [{"a": "x, y", "b": "z"}]


def test_csv_with_bom_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path / "d.csv", "\ufefftext,label\r\nhello,1\r\n\r\nworld,0\r\n".encode())
    assert records(load(path)) == [{"text": "hello", "label": "1"}, {"text": "world", "label": "0"}]


def test_json_array_object_of_columns_field_and_lines_named_json(tmp_path):
    array = write(tmp_path / "a.json", json.dumps(PAIRS_ROWS))
    columns = write(
        tmp_path / "c.json",
        json.dumps({"anchor": ["what is a cat", "what is rain"], "positive": ["a small pet", "water"]}),
    )
    nested = write(tmp_path / "n.json", json.dumps({"version": 2, "data": PAIRS_ROWS}))
    lines = write(tmp_path / "l.json", "\n".join(json.dumps(row) for row in PAIRS_ROWS))
    for path, options in [(array, {}), (columns, {}), (nested, {"field": "data"}), (lines, {})]:
        assert records(load(path, task="pairs", **options)) == PAIRS_ROWS, path


def test_jsonl_keeps_types_and_fills_missing_keys_with_null(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "n": 1}\n\n{"text": "b", "extra": [1, 2]}\n')
    assert records(load(path)) == [
        {"text": "a", "n": 1, "extra": None},
        {"text": "b", "n": None, "extra": [1, 2]},
    ]


@pytest.mark.parametrize("name", ["d.csv.gz", "d.jsonl.gz", "d.tsv.gz", "d.json.gz", "d.txt.gz"])
def test_gzip_of_each_text_format(tmp_path, name):
    plain = {
        "csv": "anchor,positive\nwhat is a cat,a small pet\nwhat is rain,water\n",
        "tsv": "anchor\tpositive\nwhat is a cat\ta small pet\nwhat is rain\twater\n",
        "jsonl": "\n".join(json.dumps(row) for row in PAIRS_ROWS),
        "json": json.dumps(PAIRS_ROWS),
        "txt": "what is a cat\nwhat is rain\n",
    }[name.split(".")[1]]
    path = write(tmp_path / name, gzip.compress(plain.encode()))
    if name.startswith("d.txt"):
        assert load(path, task="sentences")["text"][:] == ["what is a cat", "what is rain"]
    else:
        assert records(load(path, task="pairs")) == PAIRS_ROWS


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame(PAIRS_ROWS).to_parquet(path, index=False)
    assert records(load(str(path), task="pairs")) == PAIRS_ROWS


def test_xlsx_reads_cells_as_text_and_picks_sheets(tmp_path):
    path = tmp_path / "d.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"text": ["NA", "fine"], "label": [1, 0]}).to_excel(
            writer, sheet_name="first", index=False
        )
        pd.DataFrame({"text": ["other"], "label": ["x"]}).to_excel(writer, sheet_name="second", index=False)
    assert records(load(str(path))) == [{"text": "NA", "label": "1"}, {"text": "fine", "label": "0"}]
    assert records(load(str(path), sheet="second")) == [{"text": "other", "label": "x"}]
    assert records(load(str(path), sheet=1)) == [{"text": "other", "label": "x"}]


def test_txt_one_item_per_line_crlf(tmp_path):
    path = write(tmp_path / "s.txt", "first line\r\nsecond, with comma\r\n")
    assert load(path, task="sentences")["text"][:] == ["first line", "second, with comma"]


@pytest.mark.parametrize(
    "obj, expected",
    [
        (["a cat", "a dog"], {"text": ["a cat", "a dog"]}),
        ((["q1", "q2"], ["a1", "a2"]), {"anchor": ["q1", "q2"], "positive": ["a1", "a2"]}),
        ([["q1", "q2"], ["a1", "a2"]], {"anchor": ["q1", "q2"], "positive": ["a1", "a2"]}),
        ({"text": ["x", "y"], "label": [0, 1]}, {"text": ["x", "y"], "label": [0, 1]}),
        (pd.DataFrame({"text": ["x", "y"], "label": ["a", "b"]}), {"text": ["x", "y"], "label": ["a", "b"]}),
    ],
    ids=["list", "tuple-of-lists", "list-of-lists", "dict", "dataframe"],
)
def test_pkl_shapes(tmp_path, obj, expected):
    path = write(tmp_path / "d.pkl", pickle.dumps(obj))
    assert load(path).to_dict() == expected


def test_save_to_disk_folder_dataset_and_dataset_dict(tmp_path):
    Dataset.from_list(PAIRS_ROWS).save_to_disk(str(tmp_path / "single"))
    DatasetDict(
        {"train": Dataset.from_list(PAIRS_ROWS), "test": Dataset.from_list(PAIRS_ROWS[:1])}
    ).save_to_disk(str(tmp_path / "splits"))
    assert records(load(str(tmp_path / "single"), task="pairs")) == PAIRS_ROWS
    assert records(load(str(tmp_path / "splits"), task="pairs")) == PAIRS_ROWS  # default split: train
    assert records(load(str(tmp_path / "splits"), task="pairs", split="test")) == PAIRS_ROWS[:1]


def test_glob_concatenates_files_in_sorted_order(tmp_path):
    write(tmp_path / "part-2.csv", "anchor,positive\nwhat is rain,water\n")
    write(tmp_path / "part-1.csv", "anchor,positive\nwhat is a cat,a small pet\n")
    assert records(load(str(tmp_path / "part-*.csv"), task="pairs")) == PAIRS_ROWS


def test_in_memory_dataset_and_format_override(tmp_path):
    assert records(load(Dataset.from_list(PAIRS_ROWS), task="pairs")) == PAIRS_ROWS
    path = write(tmp_path / "export.data", "anchor,positive\nwhat is a cat,a small pet\nwhat is rain,water\n")
    assert records(load(path, task="pairs", format="csv")) == PAIRS_ROWS


def test_stsb_release_style_tsv_with_quotes_and_extra_columns(tmp_path):
    lines = [
        "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.",
        'main-news\theadlines\t2013\t0002\t2.500\tHe said "no" twice.\t"No," he said.\tsource-a\tsource-b',
        "main-forums\tdeft\t2014\t0003\t0.000\tA cat sleeps.\tThe stock fell.",
    ]
    path = write(tmp_path / "sts-dev.tsv", "\n".join(lines) + "\n")
    columns = {"score": "4", "sentence1": "5", "sentence2": "6"}
    dataset = load(
        path, task="scored_pairs", columns=columns, header=False, quoting="none", score_range=(0, 5)
    )
    assert dataset.column_names == ["sentence1", "sentence2", "score"]
    assert dataset["sentence1"][:] == ["A plane is taking off.", 'He said "no" twice.', "A cat sleeps."]
    assert dataset["sentence2"][1] == '"No," he said.'
    assert dataset["score"][:] == [1.0, 0.5, 0.0]
    # the real release files are named .csv although tab-separated: sep= says so
    renamed = write(tmp_path / "sts-dev.csv", "\n".join(lines) + "\n")
    assert (
        load(renamed, task="scored_pairs", columns=columns, header=False, quoting="none", sep="\t").num_rows
        == 3
    )


# ---------------------------------------------------------------- tasks and column mapping


def test_tasks_tuple():
    assert SCHEMAS == ("sentences", "pairs", "triplets", "scored_pairs", "tags", "labeled")


def test_pairs_drops_extra_columns_and_orders_canonical_columns(tmp_path):
    path = write(tmp_path / "d.csv", "id,positive,anchor\n1,a small pet,what is a cat\n")
    dataset = load(path, task="pairs")
    assert dataset.column_names == ["anchor", "positive"]
    assert records(dataset) == [PAIRS_ROWS[0]]


@pytest.mark.parametrize(
    "columns", [{"anchor": "question", "positive": "answer"}, "anchor=question, positive=answer"]
)
def test_column_mapping_dict_and_string(tmp_path, columns):
    path = write(tmp_path / "qa.jsonl", json.dumps({"question": "what is a cat", "answer": "a small pet"}))
    assert records(load(path, task="pairs", columns=columns)) == [PAIRS_ROWS[0]]


def test_one_source_column_can_fill_two_canonical_columns(tmp_path):
    path = write(tmp_path / "s.txt", "a\nb\n")
    assert records(load(path, task="pairs", columns="anchor=text,positive=text")) == [
        {"anchor": "a", "positive": "a"},
        {"anchor": "b", "positive": "b"},
    ]


def test_no_task_only_renames_mapped_columns(tmp_path):
    path = write(tmp_path / "d.csv", "q,a,id\nx,y,1\n")
    assert records(load(path, columns={"anchor": "q"})) == [{"anchor": "x", "a": "y", "id": "1"}]


def test_sentences_writes_numbers_as_text(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": 42}\n{"text": "words"}\n')
    dataset = load(path, task="sentences")
    assert dataset["text"][:] == ["42", "words"]
    assert dataset.features["text"].dtype == "string"


def test_triplets_single_negative_column(tmp_path):
    path = write(tmp_path / "t.csv", "anchor,positive,negative\nq,p,n\n")
    dataset = load(path, task="triplets")
    assert records(dataset) == [{"anchor": "q", "positive": "p", "negatives": ["n"]}]


@pytest.mark.parametrize(
    "columns",
    [{"anchor": "q", "positive": "p", "negative": ["n1", "n2"]}, "anchor=q,positive=p,negative=n1+n2"],
)
def test_triplets_several_negative_columns(tmp_path, columns):
    path = write(tmp_path / "t.csv", "q,p,n1,n2\nquery,pos,neg one,neg two\n")
    assert load(path, task="triplets", columns=columns)["negatives"][:] == [["neg one", "neg two"]]


def test_triplets_negatives_list_column(tmp_path):
    rows = [
        {"anchor": "q", "positive": "p", "negatives": ["a", "b"]},
        {"anchor": "r", "positive": "s", "negatives": ["c", "d"]},
    ]
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(row) for row in rows))
    assert records(load(path, task="triplets")) == rows


@pytest.mark.parametrize(
    "scores, options, expected",
    [
        (["0", "2.5", "5"], {"score_range": (0, 5)}, [0.0, 0.5, 1.0]),
        (["0", "2.5", "5"], {"score_range": "0,5"}, [0.0, 0.5, 1.0]),
        (["-1", "0", "1"], {"score_range": [-1, 1]}, [0.0, 0.5, 1.0]),
        (["0.25", "1", "0"], {}, [0.25, 1.0, 0.0]),  # inferred (0, 1)
        (["4", "1", "2.5"], {}, [0.8, 0.2, 0.5]),  # inferred (0, 5)
    ],
)
def test_scored_pairs_normalises_scores(tmp_path, scores, options, expected):
    body = "".join(f"s{i},t{i},{score}\n" for i, score in enumerate(scores))
    path = write(tmp_path / "s.csv", "sentence1,sentence2,score\n" + body)
    dataset = load(path, task="scored_pairs", **options)
    assert dataset.column_names == ["sentence1", "sentence2", "score"]
    assert dataset["score"][:] == pytest.approx(expected)


def test_tags_from_lists_and_delimited_strings(tmp_path):
    lists = write(tmp_path / "t.jsonl", json.dumps({"text": "x", "tags": [" git ", "linux", "git", ""]}))
    delimited = write(tmp_path / "t.csv", 'text,tags\nx," git ,linux,git,"\ny,a|b\n')
    piped = write(tmp_path / "p.csv", "text,tags\ny,a| b |a\n")
    assert load(lists, task="tags")["tags"][:] == [["git", "linux"]]
    assert load(delimited, task="tags")["tags"][:] == [["git", "linux"], ["a|b"]]
    assert load(piped, task="tags", tag_delimiter="|")["tags"][:] == [["a", "b"]]


def test_labeled_infers_sorted_string_names(tmp_path):
    path = write(tmp_path / "l.csv", "text,label,extra\ngood,positive,1\nbad,negative,2\nfine,positive,3\n")
    dataset = load(path, task="labeled")
    assert dataset.column_names == ["text", "label"]
    assert dataset.features["label"] == ClassLabel(names=["negative", "positive"])
    assert dataset["label"][:] == [1, 0, 1]
    assert label_names_from_dataset(dataset) == ["negative", "positive"]


def test_labeled_integer_labels_sort_numerically_and_stay_text_names(tmp_path):
    path = write(
        tmp_path / "l.jsonl", "\n".join(json.dumps({"text": f"t{v}", "label": v}) for v in [10, 2, 2.0, "10"])
    )
    dataset = load(path, task="labeled")
    assert dataset.features["label"].names == ["2", "10"]
    assert dataset["label"][:] == [1, 0, 0, 1]


@pytest.mark.parametrize(
    "label_names", [["neg", "pos"], "neg,pos", {0: "neg", 1: "pos"}, {"1": "pos", "0": "neg"}]
)
def test_labeled_given_names_accept_names_and_integer_ids(tmp_path, label_names):
    path = write(tmp_path / "l.csv", "text,label\na,pos\nb,0\nc,1\nd,neg\n")
    dataset = load(path, task="labeled", label_names=label_names)
    assert dataset.features["label"].names == ["neg", "pos"]
    assert dataset["label"][:] == [1, 0, 1, 0]


def test_labeled_given_names_keep_ids_of_a_missing_class(tmp_path):
    path = write(tmp_path / "eval.csv", "text,label\na,c\n")
    dataset = load(path, task="labeled", label_names=["a", "b", "c"])
    assert dataset["label"][:] == [2]


def test_labeled_text_columns_after_mapping(tmp_path):
    path = write(tmp_path / "nli.csv", "premise,hypothesis,gold\nA dog runs.,An animal moves.,entailment\n")
    dataset = load(
        path,
        task="labeled",
        columns={"sentence1": "premise", "sentence2": "hypothesis", "label": "gold"},
        text_columns=["sentence1", "sentence2"],
    )
    assert dataset.column_names == ["sentence1", "sentence2", "label"]
    assert records(dataset) == [{"sentence1": "A dog runs.", "sentence2": "An animal moves.", "label": 0}]


def test_labeled_multi_label_from_lists_and_strings(tmp_path):
    jsonl = write(
        tmp_path / "m.jsonl", '{"text": "a", "label": ["x", "y", "x"]}\n{"text": "b", "label": []}\n'
    )
    csv_path = write(tmp_path / "m.csv", 'text,label\na,"y; x"\nb,z\n')
    from_lists = load(jsonl, task="labeled", multi_label=True)
    assert from_lists.features["label"].feature.names == ["x", "y"]
    assert from_lists["label"][:] == [[0, 1], []]
    assert label_names_from_dataset(from_lists) == ["x", "y"]
    from_strings = load(csv_path, task="labeled", multi_label="true", label_delimiter=";")
    assert from_strings["label"][:] == [[1, 0], [2]]


def test_label_names_from_plain_column():
    assert label_names_from_dataset(Dataset.from_dict({"label": ["b", "a", "b"]})) == ["a", "b"]


# ---------------------------------------------------------------- samples


SAMPLE_TASKS = {
    "sentences.txt": ("sentences", {}),
    "sentences.pkl": ("sentences", {}),
    "pairs.jsonl": ("pairs", {}),
    "pairs_eval.jsonl": ("pairs", {}),
    "pairs.parquet": ("pairs", {}),
    "pairs.pkl": ("pairs", {}),
    "triplets.csv": ("triplets", {}),
    "sts.tsv": ("scored_pairs", {}),
    "sts_eval.tsv": ("scored_pairs", {}),
    "tags.jsonl": ("tags", {}),
    "tags_eval.jsonl": ("tags", {}),
    "labeled_sentiment.csv": ("labeled", {}),
    "labeled_sentiment_eval.csv": ("labeled", {}),
    "labeled_pairs.csv": ("labeled", {"text_columns": ["sentence1", "sentence2"]}),
    "labeled.xlsx": ("labeled", {}),
    "geo_requirements.csv": ("labeled", {"text_columns": ["requirement", "sample_data"]}),
    "geo_requirements_eval.csv": ("labeled", {"text_columns": ["requirement", "sample_data"]}),
}


def test_every_sample_has_a_task():
    assert sorted(SAMPLE_TASKS) == sample_names()


@pytest.mark.parametrize("name", sorted(SAMPLE_TASKS))
def test_sample_loads_for_its_task(name):
    task, options = SAMPLE_TASKS[name]
    dataset = load(sample_path(name), task=task, **options)
    assert 10 <= dataset.num_rows <= 60


def test_binary_samples_hold_the_rows_of_the_text_samples():
    pairs = load(sample_path("pairs.jsonl"), task="pairs").to_list()
    assert load(sample_path("pairs.parquet"), task="pairs").to_list() == pairs
    assert load(sample_path("pairs.pkl"), task="pairs").to_list() == pairs
    assert load(sample_path("sentences.pkl"))["text"][:] == load(sample_path("sentences.txt"))["text"][:]
    xlsx = load(sample_path("labeled.xlsx"), task="labeled")
    assert xlsx.to_list() == load(sample_path("labeled_sentiment.csv"), task="labeled").to_list()


def test_eval_samples_share_label_names_and_have_new_rows():
    train = load(sample_path("labeled_sentiment.csv"), task="labeled")
    evaluation = load(sample_path("labeled_sentiment_eval.csv"), task="labeled")
    assert label_names_from_dataset(train) == label_names_from_dataset(evaluation) == ["negative", "positive"]
    assert not set(train["text"][:]) & set(evaluation["text"][:])


def test_sample_path_unknown_name_lists_samples():
    with pytest.raises(FileNotFoundError, match="pairs.jsonl"):
        sample_path("nope.csv")


# ---------------------------------------------------------------- user files are only read


def test_loading_leaves_files_unchanged(tmp_path):
    csv_path = tmp_path / "d.csv"
    write(csv_path, "text,label\na,pos\nb,neg\n")
    xlsx_path = tmp_path / "d.xlsx"
    pd.DataFrame({"text": ["a"], "label": ["pos"]}).to_excel(xlsx_path, index=False)
    folder = tmp_path / "saved"
    Dataset.from_dict({"text": ["a", "b"], "label": ["pos", "neg"]}).save_to_disk(str(folder))
    before = {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()
    }
    for source in (csv_path, xlsx_path, folder):
        load(source, task="labeled")
    after = {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()
    }
    assert after == before  # same bytes and mtimes, and no cache file appeared beside the data
