"""data_utils.load error messages: each names the file, row, column, what was expected and what exists."""

from __future__ import annotations

import gzip
import json
import pickle

import pandas as pd
import pytest
from datasets import Dataset

from data_utils import ConfigError, DataError, load


def write(path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def data_error(source, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        load(source, **kwargs)
    return caught.value


def config_error(source, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(source, **kwargs)
    return caught.value


# ---------------------------------------------------------------- files that cannot be read


def test_missing_file_suggests_close_names(tmp_path):
    write(tmp_path / "train.csv", "text\na\n")
    error = data_error(str(tmp_path / "trian.csv"))
    assert "trian.csv" in str(error) and "did you mean 'train.csv'" in str(error)


def test_missing_file_in_missing_folder(tmp_path):
    error = data_error(str(tmp_path / "nowhere" / "train.csv"))
    assert "does not exist" in str(error) and "nowhere" in str(error)


def test_hub_like_id_offline_is_not_looked_up(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    message = str(data_error("someone/some-dataset"))
    assert "someone/some-dataset" in message and "not a file" in message and "offline" in message


@pytest.mark.parametrize(
    "content", [b"", b"  \n\n", gzip.compress(b"")], ids=["zero-bytes", "blank", "empty-gz"]
)
def test_empty_file(tmp_path, content):
    name = "d.csv.gz" if content.startswith(b"\x1f\x8b") else "d.csv"
    error = data_error(write(tmp_path / name, content), task="sentences")
    assert name in str(error) and "empty" in str(error)


@pytest.mark.parametrize("name", ["d.jsonl", "d.txt", "d.json"])
def test_empty_text_formats(tmp_path, name):
    assert "empty" in str(data_error(write(tmp_path / name, "\n")))


def test_header_only_csv(tmp_path):
    error = data_error(write(tmp_path / "d.csv", "anchor,positive\n"), task="pairs")
    assert "d.csv" in str(error) and "header (anchor, positive) but no data rows" in str(error)


def test_header_only_xlsx(tmp_path):
    path = tmp_path / "d.xlsx"
    pd.DataFrame({"text": [], "label": []}).to_excel(path, index=False)
    assert "header (text, label) but no data rows" in str(data_error(str(path)))


def test_malformed_json_line_gives_its_row(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n')
    error = data_error(path)
    assert error.row == 3
    assert "d.jsonl, row 3" in str(error) and "malformed JSON" in str(error)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    error = data_error(write(tmp_path / "d.jsonl", '{"text": "a"}\n["b"]\n'))
    assert error.row == 2 and "not an object" in str(error)


def test_malformed_json_array_gives_line(tmp_path):
    error = data_error(write(tmp_path / "d.json", '[\n{"text": "a"},\n{"text": "b"\n]'))
    assert "d.json" in str(error) and "line 4" in str(error)


def test_ragged_rows_give_first_row_and_count(tmp_path):
    path = write(tmp_path / "d.csv", "text,label,id\na,pos,1\nb, with comma,neg,2\nc,neg,3\nd,x,y,4\n")
    error = data_error(path)
    assert error.row == 2
    message = str(error)
    assert "d.csv, row 2" in message and "4 fields but the header has 3 (text, label, id)" in message
    assert "2 rows like this: 2, 4" in message and "must be quoted" in message


def test_short_row(tmp_path):
    error = data_error(write(tmp_path / "d.csv", "text,label\na,pos\nb\n"))
    assert error.row == 2 and "1 fields but the header has 2" in str(error)


def test_csv_that_is_tab_separated(tmp_path):
    error = data_error(write(tmp_path / "d.csv", "text\tlabel\na, b\tpos\n"))
    assert "d.csv" in str(error) and "looks tab-separated" in str(error) and ".tsv" in str(error)


def test_tsv_that_is_comma_separated(tmp_path):
    error = data_error(write(tmp_path / "d.tsv", "text,label\nab,pos\n"))
    assert "looks comma-separated" in str(error)


def test_unbalanced_quote_suggests_quoting_none(tmp_path):
    error = data_error(write(tmp_path / "d.tsv", 'a\tb\nx\t"quoted" text\ny\tz\n'))
    assert "line 2" in str(error) and "quoting='none'" in str(error)


def test_non_utf8_bytes_give_offset_line_and_fix(tmp_path):
    path = write(tmp_path / "d.csv", b"text,label\ncaf" + b"\xe9,pos\n")
    message = str(data_error(path))
    assert "d.csv" in message and "not valid utf-8" in message
    assert "byte offset 14" in message and "line 2" in message and "encoding='latin-1'" in message
    assert load(path, encoding="latin-1")["text"][:] == ["café"]


@pytest.mark.parametrize(
    "name, content, looks_like",
    [
        ("d.json", "text,label\na,pos\n", "comma-separated text (CSV)"),
        ("d.jsonl", "text\tlabel\na\tpos\n", "tab-separated text (TSV)"),
        ("d.parquet", "text,label\na,pos\n", "CSV"),
        ("d.xlsx", "text,label\na,pos\n", "CSV"),
        ("d.csv", b"PAR1\x00\x00PAR1", "a parquet file"),
        ("d.txt", b"PK\x03\x04\x00\x00", "a zip archive"),
        ("d.csv", '[{"text": "a"}]', "JSON"),
        ("d.pkl", "text,label\na,pos\n", "CSV"),
        ("d.csv.gz", "text\na\n", "not gzip-compressed"),
    ],
)
def test_content_not_matching_extension(tmp_path, name, content, looks_like):
    message = str(data_error(write(tmp_path / name, content)))
    assert name in message and looks_like in message


def test_old_xls_is_named(tmp_path):
    message = str(data_error(write(tmp_path / "d.xlsx", b"\xd0\xcf\x11\xe0" + b"\x00" * 20)))
    assert "old Excel .xls" in message


def test_unsupported_extension_lists_supported(tmp_path):
    message = str(data_error(write(tmp_path / "d.docx", "x")))
    assert "unsupported file type '.docx'" in message and ".jsonl" in message and "format=" in message


@pytest.mark.parametrize(
    "obj, words",
    [
        ([1, 2, 3], "a list of 3 items of type int"),
        ((["a", "b"], ["c"]), "different lengths (2 and 1)"),
        ({"a": 1}, "a dict of 1 items of type int"),
        ("just a string", "a str"),
        ([], "an empty list"),
    ],
)
def test_pkl_of_the_wrong_shape(tmp_path, obj, words):
    message = str(data_error(write(tmp_path / "d.pkl", pickle.dumps(obj))))
    assert "d.pkl" in message and words in message


def test_sheet_that_does_not_exist_lists_sheets(tmp_path):
    path = tmp_path / "d.xlsx"
    pd.DataFrame({"text": ["a"]}).to_excel(path, index=False, sheet_name="data")
    assert "has no sheet 'other'" in str(data_error(str(path), sheet="other")) and "data" in str(
        data_error(str(path), sheet="other")
    )


def test_json_column_mixing_scalars_and_objects(tmp_path):
    error = data_error(write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": {"x": 1}}\n'))
    assert (error.row, error.column) == (2, "text") and "str (first in row 1), dict (first in row 2)" in str(
        error
    )


def test_folder_not_written_by_save_to_disk(tmp_path):
    write(tmp_path / "a.csv", "text\nx\n")
    message = str(data_error(str(tmp_path)))
    assert "not one written by Dataset.save_to_disk" in message and "a.csv" in message and "*.csv" in message


def test_saved_dataset_dict_unknown_split(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(tmp_path / "saved"))
    assert "has no split 'dev'" in str(data_error(str(tmp_path / "saved"), split="dev"))


def test_glob_matching_nothing(tmp_path):
    assert "matches no files" in str(data_error(str(tmp_path / "*.csv")))


def test_glob_reports_the_file_and_row_of_a_bad_record(tmp_path):
    write(tmp_path / "a.csv", "text\nfine\nalso fine\n")
    write(tmp_path / "b.csv", 'text\nok\n""\n')
    error = data_error(str(tmp_path / "*.csv"), task="sentences")
    assert error.source.endswith("b.csv") and error.row == 2


def test_glob_files_with_different_columns(tmp_path):
    write(tmp_path / "a.csv", "text\nx\n")
    write(tmp_path / "b.csv", "sentence\ny\n")
    assert "has columns (sentence) but" in str(data_error(str(tmp_path / "*.csv")))


# ---------------------------------------------------------------- schema errors


def test_missing_column_names_it_lists_columns_and_suggests(tmp_path):
    path = write(tmp_path / "d.csv", "questoin,answer\nq,a\n")
    error = data_error(path, task="pairs", columns={"anchor": "question", "positive": "answer"})
    message = str(error)
    assert "no column 'question'" in message and "did you mean 'questoin'" in message
    assert error.available == ["questoin", "answer"] and "Columns present: questoin, answer" in message


def test_missing_canonical_column_explains_mapping(tmp_path):
    message = str(data_error(write(tmp_path / "d.csv", "q,a\nx,y\n"), task="pairs"))
    assert (
        "no column 'anchor'" in message
        and "--columns anchor=" in message
        and "Columns present: q, a" in message
    )


@pytest.mark.parametrize(
    "content, row, words",
    [
        ('{"text": "a"}\n{"text": null}\n', 2, "is missing (null)"),
        ('{"text": "a"}\n{"text": ""}\n', 2, "is empty"),
        ('{"text": "a"}\n{"text": "  \\t "}\n', 2, "is only whitespace"),
        ('{"text": ["a"]}\n{"text": ["x"]}\n', 1, "is a list, not text"),
        ('{"text": "a"}\n{"other": "b"}\n', 2, "is missing (null)"),
        ('{"text": "a"}\n\n{"text": ""}\n', 3, "is empty"),  # rows of a jsonl are its lines
    ],
)
def test_bad_text_gives_row_and_column(tmp_path, content, row, words):
    error = data_error(write(tmp_path / "d.jsonl", content), task="sentences")
    assert error.row == row and error.column == "text"
    assert f"d.jsonl, row {row}, column 'text': text {words}" in str(error)


def test_bad_text_reports_first_row_and_all_rows_like_it(tmp_path):
    path = write(tmp_path / "d.csv", "anchor,positive\na,b\nc,\nd,e\nf, \ng,\n")
    error = data_error(path, task="pairs")
    assert error.row == 2 and error.column == "positive"
    assert "(3 rows like this: 2, 4, 5)" in str(error) and "expected non-empty text" in str(error)


def test_non_numeric_score(tmp_path):
    path = write(tmp_path / "s.csv", "sentence1,sentence2,score\na,b,1\nc,d,high\n")
    error = data_error(path, task="scored_pairs")
    assert (error.row, error.column) == (2, "score") and "score is not a number: 'high'" in str(error)


def test_score_outside_the_given_range(tmp_path):
    path = write(tmp_path / "s.csv", "sentence1,sentence2,score\na,b,1\nc,d,7\ne,f,-1\n")
    error = data_error(path, task="scored_pairs", score_range=(0, 5))
    message = str(error)
    assert error.row == 2 and "score '7' is outside score_range (0, 5)" in message
    assert "(2 rows like this: 2, 3)" in message and "between 0 and 5" in message


def test_score_range_that_cannot_be_inferred(tmp_path):
    path = write(tmp_path / "s.csv", "sentence1,sentence2,score\na,b,1\nc,d,9\n")
    message = str(data_error(path, task="scored_pairs"))
    assert "cannot infer the score range: scores go from 1 to 9" in message and "score_range" in message


def test_unknown_label_names_row_value_and_known_labels(tmp_path):
    path = write(tmp_path / "l.csv", "text,label\na,pos\nb,neutral\nc,neg\n")
    error = data_error(path, task="labeled", label_names=["neg", "pos"])
    assert (error.row, error.column) == (2, "label")
    assert "unknown label 'neutral'" in str(error) and "neg, pos" in str(error)


def test_integer_ids_are_not_accepted_when_names_are_integers(tmp_path):
    path = write(tmp_path / "l.csv", "text,label\na,1\nb,0\n")
    error = data_error(path, task="labeled", label_names=["1", "2"])
    assert error.row == 2 and "unknown label 0" in str(error)


def test_unknown_multi_label(tmp_path):
    path = write(tmp_path / "l.jsonl", '{"text": "a", "label": ["x"]}\n{"text": "b", "label": ["x", "q"]}\n')
    error = data_error(path, task="labeled", multi_label=True, label_names=["x", "y"])
    assert error.row == 2 and "unknown label 'q'" in str(error)


def test_missing_label(tmp_path):
    error = data_error(write(tmp_path / "l.csv", "text,label\na,pos\nb,\n"), task="labeled")
    assert error.row == 2 and "label is missing" in str(error)


def test_empty_tag_list(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a", "tags": ["x"]}\n{"text": "b", "tags": [" ", ""]}\n')
    error = data_error(path, task="tags")
    assert (error.row, error.column) == (2, "tags") and "tag list is empty" in str(error)


def test_triplet_negatives_of_different_lengths(tmp_path):
    rows = [
        {"anchor": "a", "positive": "b", "negatives": ["c", "d"]},
        {"anchor": "e", "positive": "f", "negatives": ["g"]},
    ]
    error = data_error(write(tmp_path / "t.jsonl", "\n".join(map(json.dumps, rows))), task="triplets")
    assert error.row == 2 and "has 1 negatives but the first row has 2" in str(error)


def test_triplet_negatives_column_holding_text(tmp_path):
    error = data_error(write(tmp_path / "t.csv", "anchor,positive,negatives\na,b,c\n"), task="triplets")
    assert "holds a str, not a list" in str(error) and "columns={'negative': ['neg1', 'neg2']}" in str(error)


def test_triplets_without_negative_column(tmp_path):
    message = str(data_error(write(tmp_path / "t.csv", "anchor,positive,neg\na,b,c\n"), task="triplets"))
    assert (
        "no column 'negative' or 'negatives'" in message
        and "Columns present: anchor, positive, neg" in message
    )


def test_missing_column_among_several_negatives(tmp_path):
    path = write(tmp_path / "t.csv", "anchor,positive,n1,n2\na,b,c,d\n")
    assert "no column 'n3'" in str(data_error(path, task="triplets", columns="negative=n1+n3"))


def test_empty_in_memory_dataset():
    assert "has no rows" in str(data_error(Dataset.from_dict({"text": []})))


# ---------------------------------------------------------------- configuration errors


def test_unknown_task_suggests():
    assert "did you mean 'pairs'" in str(config_error(Dataset.from_dict({"x": ["a"]}), task="pair"))


def test_unknown_option_suggests_and_lists_valid_ones():
    message = str(config_error(Dataset.from_dict({"x": ["a"]}), task="scored_pairs", scor_range=(0, 5)))
    assert (
        "unknown option 'scor_range'" in message
        and "did you mean 'score_range'" in message
        and "header" in message
    )


def test_option_of_another_task():
    message = str(config_error(Dataset.from_dict({"x": ["a"]}), task="pairs", score_range=(0, 5)))
    assert "'score_range' applies to task scored_pairs" in message


@pytest.mark.parametrize(
    "options, words",
    [
        ({"columns": "anchor"}, "not canonical=source"),
        ({"columns": {"anchr": "x"}}, "columns names 'anchr', which task 'pairs' does not use"),
        ({"columns": {"anchor": ["a", "b"]}}, "must be one column name"),
    ],
)
def test_bad_column_mapping(options, words):
    assert words in str(config_error(Dataset.from_dict({"a": ["x"], "b": ["y"]}), task="pairs", **options))


@pytest.mark.parametrize(
    "options, words",
    [
        ({"score_range": "5,0"}, "lo < hi"),
        ({"score_range": "abc"}, "two numbers"),
    ],
)
def test_bad_score_range(options, words):
    dataset = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": [1.0]})
    assert words in str(config_error(dataset, task="scored_pairs", **options))


def test_bad_label_names():
    dataset = Dataset.from_dict({"text": ["a"], "label": ["x"]})
    assert "more than once" in str(config_error(dataset, task="labeled", label_names=["x", "x"]))
    assert "ids must be 0..1" in str(config_error(dataset, task="labeled", label_names={0: "x", 2: "y"}))
    assert "true or false" in str(config_error(dataset, task="labeled", multi_label="maybe"))


@pytest.mark.parametrize("name", ["pairs.jsonl", "sentences.txt", "pairs.jsonl.gz"])
def test_a_file_this_user_may_not_read_is_named_as_unreadable_not_as_damaged(tmp_path, monkeypatch, name):
    """A permission error (which root never sees, so it is injected) is 'permission denied', never 'damaged gzip'."""
    import gzip as gzip_module

    import data_utils.readers as readers

    path = tmp_path / name
    content = b'{"anchor": "a", "positive": "b"}\n' if "pairs" in name else b"one sentence\n"
    path.write_bytes(gzip_module.compress(content) if name.endswith(".gz") else content)

    def refusing(original):
        def call(target, *args, **kwargs):
            if str(target) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return original(target, *args, **kwargs)

        return call

    monkeypatch.setattr(readers.Path, "open", refusing(readers.Path.open))
    monkeypatch.setattr(readers.Path, "read_bytes", refusing(readers.Path.read_bytes))
    monkeypatch.setattr(readers.gzip, "open", refusing(readers.gzip.open))
    monkeypatch.setenv("LORASMITH_DATA_CACHE", "off")
    with pytest.raises(DataError) as caught:
        load(str(path), task="pairs" if "pairs" in name else "sentences")
    message = str(caught.value)
    assert str(path) in message and "permission denied" in message and "gzip" not in message
