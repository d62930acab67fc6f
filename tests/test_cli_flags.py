"""One name and one meaning per flag: every task and contact command takes the shared spellings
(``--out``, ``--bootstrap``, ``--tasks``, ``--data``) and the old ones as the same flag."""

from __future__ import annotations

import pytest

from protlm.cli.main import build_parser

OUT = [
    ["train", "--config", "c.yaml"],
    ["evaluate", "--head", "h"],
    ["predict", "--head", "h", "--input", "x.fa"],
    ["export-fasta", "--config", "c.yaml"],
    ["benchmark"],
    ["contacts", "train", "--config", "c.yaml"],
    ["contacts", "attention", "--model", "m"],
    ["contacts", "evaluate", "--head", "h"],
    ["contacts", "predict", "--head", "h", "--input", "x.fa"],
    ["contacts", "benchmark"],
]


@pytest.mark.parametrize("argv", OUT, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("spelling", ["--out", "--output"])
def test_out_and_output_are_one_flag(argv, spelling):
    args = build_parser().parse_args([*argv, spelling, "somewhere"])
    assert args.out == "somewhere"
    assert not hasattr(args, "output")


@pytest.mark.parametrize("argv", [["evaluate", "--head", "h"], ["contacts", "evaluate", "--head", "h"],
                                  ["contacts", "attention", "--model", "m", "--out", "o"]],
                         ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("spelling", ["--bootstrap", "--n-boot"])
def test_bootstrap_and_n_boot_are_one_flag(argv, spelling):
    args = build_parser().parse_args([*argv, spelling, "7"])
    assert args.bootstrap == 7
    assert not hasattr(args, "n_boot")


@pytest.mark.parametrize("argv", [["benchmark"], ["contacts", "benchmark"]], ids=lambda a: " ".join(a))
@pytest.mark.parametrize("spelling", ["--tasks", "--only"])
def test_tasks_and_only_are_one_flag(argv, spelling):
    args = build_parser().parse_args([*argv, spelling, "a", "b"])
    assert args.tasks == ["a", "b"]
    assert not hasattr(args, "only")


@pytest.mark.parametrize("argv", [a for a in OUT if a[:2] != ["predict", "--head"]
                                  and a[:2] != ["contacts", "predict"]], ids=lambda a: " ".join(a[:2]))
def test_data_is_one_flag_with_one_default(argv):
    """--data is the benchmark data folder everywhere it is offered; left out it is None (each
    command then uses $PROTLM_DATA, else ../shared/data)."""
    parser = build_parser()
    assert parser.parse_args([*argv, "--out", "o", "--data", "D"]).data == "D"
    assert parser.parse_args([*argv, "--out", "o"]).data is None


@pytest.mark.parametrize("argv", [a for a in OUT if a[0] != "export-fasta"], ids=lambda a: " ".join(a[:2]))
def test_threads_and_json_everywhere(argv):
    args = build_parser().parse_args([*argv, "--out", "o", "--threads", "2", "--json"])
    assert args.threads == 2 and args.json


def test_a_missing_data_folder_is_one_error(tmp_path, capsys):
    from protlm.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nprotocol: sequence_to_class\nembedder: onehot\nhead: {type: ffn}\n"
                   "data: {train: {benchmark: deeploc}}\n")
    code = main(["export-fasta", "--config", str(cfg), "--data", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "o.fa")])
    err = capsys.readouterr().err
    assert code == 2 and "--data" in err and "no such folder" in err, err


def test_contact_evaluation_flags_reach_the_request():
    from protlm.cli.main import build_parser
    from protlm.cli.tasks import evaluation_request

    args = build_parser().parse_args(["evaluate", "--head", "h", "--max-chains", "5", "--max-length", "300",
                                      "--full-sequences", "f.fa", "--include-early-stop"])
    req = evaluation_request(args)
    assert req["max_chains"] == 5 and req["max_length"] == 300 and req["full_sequences"] == "f.fa"
    assert req["include_early_stop"] is True
    c = build_parser().parse_args(["contacts", "evaluate", "--head", "h", "--max-length", "300",
                                   "--full-sequences", "f.fa"])
    assert c.max_length == 300 and c.full_sequences == "f.fa"
