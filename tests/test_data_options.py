"""Reader options from recipes and every CLI (one definition), files as official releases ship them, data that
looks valid but is not (header line in a .txt, qrels without a header, labels differing by case), the Arrow
cache shared by the processes of a machine."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from data_utils import DataError, load
from data_utils.options import READ_OPTIONS, ReadOptions
from train.common.args import DataArguments

STSB_LINES = [
    "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.",
    'main-news\theadlines\t2013\t0002\t2.500\tHe said "no" twice.\t"No," he said.\tsource-a\tsource-b',
    "main-forums\tdeft\t2014\t0003\t0.000\tA cat sleeps.\tThe stock fell.",
]


def write(path, text: str, encoding: str = "utf-8") -> str:
    path.write_text(text, encoding=encoding)
    return str(path)


# ---------------------------------------------------------------- one option set everywhere


def test_every_option_a_message_advises_exists_in_load_recipes_and_clis():
    from data_utils.check import make_parser as check_parser
    from eval.classify import make_parser as classify_parser
    from eval.probe import make_parser as probe_parser
    from eval.retrieval import make_parser as retrieval_parser
    from eval.sts import make_parser as sts_parser

    advised = ("sep", "encoding", "format", "quoting", "header")
    recipe_fields = {field.name for field in dataclasses.fields(DataArguments)}
    assert set(advised) <= set(READ_OPTIONS) <= recipe_fields
    for parser in (check_parser(), sts_parser(), retrieval_parser(), classify_parser(), probe_parser()):
        flags = {option for action in parser._actions for option in action.option_strings}
        assert {f"--{name}" for name in READ_OPTIONS} <= flags, parser.prog
    assert all(field.metadata["help"] for field in dataclasses.fields(ReadOptions))


def test_recipe_read_options_reach_load(tmp_path):
    path = write(tmp_path / "pairs.csv", "q;a\nwhat is rain;water\n")
    args = DataArguments(task="pairs", train_data=path, sep="semicolon", columns={"anchor": "q", "positive": "a"})
    assert args.load_options() == {"sep": "semicolon"}
    assert load(path, task="pairs", columns=args.columns, **args.load_options()).to_list() == [
        {"anchor": "what is rain", "positive": "water"}
    ]


# ---------------------------------------------------------------- files as they ship


@pytest.mark.parametrize("sep", ["\t", "\\t", "tab"])
def test_tab_separated_txt_with_header_row_is_read_by_saying_so(tmp_path, sep):
    path = write(tmp_path / "release.txt", "question\tanswer\nwhat is rain\twater\nwhat is a cat\ta pet\n")
    dataset = load(path, task="pairs", sep=sep, columns={"anchor": "question", "positive": "answer"})
    assert dataset.to_list() == [
        {"anchor": "what is rain", "positive": "water"},
        {"anchor": "what is a cat", "positive": "a pet"},
    ]


def test_txt_read_as_tsv_with_format(tmp_path):
    path = write(tmp_path / "release.txt", "anchor\tpositive\nq\tp\n")
    assert load(path, task="pairs", format="tsv").to_list() == [{"anchor": "q", "positive": "p"}]


@pytest.mark.parametrize("sep", [";", "semicolon"])
def test_semicolon_csv(tmp_path, sep):
    path = write(tmp_path / "excel.csv", 'text;label\n"a; b";pos\nc, d;neg\n')
    assert load(path, task="labeled", sep=sep)["text"][:] == ["a; b", "c, d"]


@pytest.mark.parametrize("header", [False, "false", "none"])
def test_no_header_columns_by_position(tmp_path, header):
    path = write(tmp_path / "pairs.tsv", "q1\tp1\textra\nq2\tp2\textra\n")
    dataset = load(path, task="pairs", header=header, columns={"anchor": 0, "positive": 1})
    assert dataset.to_list() == [{"anchor": "q1", "positive": "p1"}, {"anchor": "q2", "positive": "p2"}]


def test_utf16_file_with_encoding_option(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\ncafé,pos\n", encoding="utf-16")
    with pytest.raises(DataError, match="encoding='utf-16'"):
        load(path)
    assert load(path, encoding="utf-16")["text"][:] == ["café"]


def test_quoting_none_keeps_quote_characters(tmp_path):
    path = write(tmp_path / "d.tsv", 'text\tlabel\n"quoted" text\tpos\n')
    assert load(path, quoting="none")["text"][:] == ['"quoted" text']


def test_unknown_sep_spelling_is_a_config_error(tmp_path):
    from data_utils import ConfigError

    with pytest.raises(ConfigError, match="one character"):
        load(write(tmp_path / "d.csv", "a\nb\n"), sep="::")


# ---------------------------------------------------------------- the STS Benchmark release, one detection


def test_stsb_release_file_loads_as_scored_pairs_without_options(tmp_path):
    path = write(tmp_path / "sts-dev.csv", "\n".join(STSB_LINES) + "\n")
    dataset = load(path, task="scored_pairs")
    assert dataset.column_names == ["sentence1", "sentence2", "score"]
    assert dataset["sentence2"][1] == '"No," he said.'
    assert dataset["score"][:] == [1.0, 0.5, 0.0]  # (0, 5) is the release's range


def test_train_embed_and_eval_sts_read_the_release_alike(tmp_path):
    from eval.sts import load_sts_data

    path = write(tmp_path / "sts-train.csv", "\n".join(STSB_LINES[::2]) + "\n")  # scores 5 and 0 only
    args = DataArguments(task="scored_pairs", train_data=path)
    for_training = load(path, task="scored_pairs", columns=args.columns, **args.load_options())
    assert for_training.to_list() == load_sts_data(path).to_list()
    assert for_training["score"][:] == [1.0, 0.0]


def test_stsb_format_can_be_forced_and_names_its_columns(tmp_path):
    path = write(tmp_path / "sts.data", "\n".join(STSB_LINES) + "\n")
    dataset = load(path, format="stsb")
    assert dataset.column_names[:7] == ["genre", "filename", "year", "id", "score", "sentence1", "sentence2"]


# ---------------------------------------------------------------- valid-looking but wrong


def test_txt_header_line_is_warned_about_and_header_true_skips_it(tmp_path, caplog):
    path = write(tmp_path / "s.txt", "sentence\nthe first one\n\nthe third\n")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DataError) as caught:
            load(path, task="sentences")
    assert "line 1 is 'sentence', which looks like a column name" in caplog.text and "header=true" in caplog.text
    assert caught.value.row == 3  # the empty line
    with pytest.raises(DataError) as caught:
        load(path, task="sentences", header=True)
    assert caught.value.row == 3  # still the file's line number with the header skipped
    good = write(tmp_path / "good.txt", "text\na\nb\n")
    assert load(good, task="sentences", header="true")["text"][:] == ["a", "b"]


def test_qrels_without_header_keep_their_first_judgement(tmp_path):
    from eval.retrieval import read_qrels

    body = "q1\td1\t1\nq2\td2\t2\n"
    assert read_qrels(write(tmp_path / "plain.tsv", body)) == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    headed = write(tmp_path / "headed.tsv", "query-id\tcorpus-id\tscore\n" + body)
    assert read_qrels(headed) == {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_labels_differing_only_by_case_are_warned_about(tmp_path, caplog):
    path = write(tmp_path / "l.csv", "text,label\na,Positive\nb,positive\nc,negative\n")
    with caplog.at_level(logging.WARNING):
        dataset = load(path, task="labeled")
    assert dataset.features["label"].names == ["Positive", "negative", "positive"]
    assert "'Positive' / 'positive'" in caplog.text and "column 'label'" in caplog.text


# ---------------------------------------------------------------- the Arrow cache


def test_validated_file_is_cached_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASMITH_DATA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "l.csv"
    write(path, "text,label\na,pos\nb,neg\n")
    first = load(str(path), task="labeled")
    again = load(str(path), task="labeled")
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 1
    assert again.cache_files == first.cache_files and again.features == first.features
    assert again.to_list() == first.to_list()
    write(path, "text,label\na,pos\nb,neg\nc,neu\n")
    assert load(str(path), task="labeled").features["label"].names == ["neg", "neu", "pos"]
    assert load(str(path), task="labeled", label_names=["neg", "neu", "pos", "x"]).num_rows == 3  # options key it too
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 3


def test_invalid_file_is_never_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASMITH_DATA_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path / "p.csv", "anchor,positive\na,\n")
    for _ in range(2):
        with pytest.raises(DataError, match="row 1, column 'positive'"):
            load(path, task="pairs")
    assert not list((tmp_path / "cache").glob("*.arrow"))


def test_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASMITH_DATA_CACHE", "off")
    dataset = load(write(tmp_path / "s.txt", "a\nb\n"), task="sentences")
    assert dataset.cache_files == [] and dataset["text"][:] == ["a", "b"]


# ---------------------------------------------------------------- the fast csv path reads what the Python one reads


@pytest.mark.parametrize(
    "content, fast_path",
    [
        ("text,label\nNA,null\n1.0,\n , x \n", True),
        ("\ufefftext,label\r\nhello,1\r\n\r\nworld,0\r\n", True),
        ("a,b\nx,y\n\n\nz,w", True),
        ("a,b\rx,y\rz,w\r", False),  # old Mac line ends: the first line is not what Python splits
        ("a,b\nx,y,z\n", False),  # ragged: the fast path declines, the Python one reports
        ('a,b\n"q, r",s\n', False),  # quotes: the fast path declines
    ],
)
def test_arrow_csv_path_equals_python_csv_path(tmp_path, content, fast_path):
    from pathlib import Path

    from data_utils import readers

    path = Path(write(tmp_path / "d.csv", content))
    fast = readers._read_delimited_arrow(path, str(path), {}, "csv")
    try:
        slow, _ = readers._read_streamed("csv", path, readers._head(path, str(path)), str(path), {})
    except DataError:
        assert fast is None
        return
    assert (fast is not None) == fast_path
    assert fast is None or fast.to_pylist() == slow.to_pylist()


# ---------------------------------------------------------------- parsed once per machine

_RANK_SCRIPT = """
import sys
from accelerate import PartialState
import data_utils.loader as loader
from lorasmith.errors import DataError

state = PartialState(cpu=True)
calls = []
read = loader.read
loader.read = lambda *args, **kwargs: calls.append(1) or read(*args, **kwargs)
try:
    rows = loader.load(sys.argv[1], task="pairs").num_rows
except DataError as error:
    rows = f"error: {error}"
with open(f"{sys.argv[2]}/rank{state.process_index}", "w") as out:
    out.write(f"{len(calls)} {rows}")
"""


@pytest.mark.parametrize("valid", [True, False])
def test_local_main_process_parses_and_the_others_read_its_cache(tmp_path, valid):
    from multiproc import run_multiprocess

    script = tmp_path / "ranks.py"
    script.write_text(_RANK_SCRIPT)
    data = write(tmp_path / "pairs.csv", "anchor,positive\nq,p\nr,s\n" if valid else "anchor,positive\nq,\n")
    run_multiprocess([str(script), data, str(tmp_path)], env={"LORASMITH_DATA_CACHE": str(tmp_path / "cache")})
    results = [(tmp_path / f"rank{rank}").read_text() for rank in range(2)]
    if valid:
        assert results == ["1 2", "0 2"]  # rank 1 read the Arrow file rank 0 wrote
    else:  # nothing cached: each process parses and reports the same error, nobody waits forever
        assert results[0] == results[1] and results[0].startswith("1 error: ") and "row 1, column 'positive'" in results[0]
