"""Benchmark data loaders: unit tests on small fixtures, then counts on the real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from protlm.data.alphabet import CleaningPolicy
from protlm.data.benchmarks import (
    BENCHMARKS,
    load_benchmark,
    load_biotrainer_fasta,
    load_deeploc,
    load_netsurfp,
    load_prottrans_csv,
    load_seq_label_csv,
    summarize,
)
from protlm.errors import ConfigError, InputError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- NetSurfP trio


def netsurfp_files(tmp_path: Path, **override: str) -> dict[str, Path]:
    files = {
        "seq": ">p1\nMKUV\n>p2\nACDEFG\n>p3\nWY\n",
        "lab": (
            ">p1 SET=train VALIDATION=False\nCCHH\n"
            ">p2 SET=train VALIDATION=True\nEEECCC\n"
            ">p3 SET=test VALIDATION=False\nCC\n"
        ),
        "mask": ">p1\n0111\n>p2\n111111\n>p3\n11\n",
        "d8": (
            ">p1 SET=train VALIDATION=False\n-CGH\n"
            ">p2 SET=train VALIDATION=True\nEBETSC\n"
            ">p3 SET=test VALIDATION=False\n--\n"
        ),
        "m8": ">p1\n0101\n>p2\n111111\n>p3\n00\n",
    }
    files.update(override)
    return {k: write(tmp_path / f"{k}.fasta", v) for k, v in files.items()}


def test_netsurfp_trio_and_8_state(tmp_path):
    f = netsurfp_files(tmp_path)
    recs = load_netsurfp(f["seq"], f["lab"], f["mask"], f["d8"], f["m8"])
    assert [r.id for r in recs] == ["p1", "p2", "p3"]
    assert [r.split for r in recs] == ["train", "valid", "test"]
    p1, p2, p3 = recs
    assert p1.sequence == "MKXV"  # U -> X keeps the length
    assert p1.residue_labels["dssp3"] == "CCHH"
    assert p1.residue_masks["dssp3"].dtype == np.uint8
    assert p1.residue_masks["dssp3"].tolist() == [0, 1, 1, 1]
    assert p1.residue_labels["dssp8"] == "-CGH"
    # '-' is masked even where mask8 says 1 would not matter; mask8 zeros stay zero
    assert p1.residue_masks["dssp8"].tolist() == [0, 1, 0, 1]
    assert p2.residue_masks["dssp8"].tolist() == [1] * 6
    assert "dssp8" not in p3.residue_labels and "dssp8" not in p3.residue_masks
    # without mask8 the mask comes from '-' alone
    recs = load_netsurfp(f["seq"], f["lab"], f["mask"], f["d8"])
    assert recs[0].residue_masks["dssp8"].tolist() == [0, 1, 1, 1]
    # without 8-state files: only dssp3
    recs = load_netsurfp(f["seq"], f["lab"], f["mask"])
    assert all(set(r.residue_labels) == {"dssp3"} for r in recs)


@pytest.mark.parametrize(
    "override, file_key, parts",
    [
        ({"lab": ">p1 SET=train\nCCH\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "3 positions", "4 residues"]),
        ({"mask": ">p1\n0111\n>p9\n111111\n>p3\n11\n"}, "mask", ["'p9'", "'p2'", "same order"]),
        ({"mask": ">p1\n0111\n>p2\n111111\n"}, "mask", ["ends after 2", "'p3'"]),
        ({"mask": ">p1\n0111\n>p2\n111111\n>p3\n11\n>p4\n1\n"}, "mask", ["'p4'", "no counterpart"]),
        ({"mask": ">p1\n01x1\n>p2\n111111\n>p3\n11\n"}, "mask", ["'p1'", "'x'", "position 3"]),
        ({"lab": ">p1 SET=train\nCCHX\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "'X'", "position 4"]),
        ({"lab": ">p1 SET=train oops\nCCHH\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "'oops'", "KEY=value"]),
        ({"lab": ">p1 SET=dev\nCCHH\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "SET='dev'"]),
        ({"lab": ">p1 VALIDATION=False\nCCHH\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "no SET="]),
        ({"lab": ">p1 SET=train VALIDATION=maybe\nCCHH\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "VALIDATION='maybe'"]),
        # a gap in the sequence file is removed by cleaning: lengths no longer line up
        ({"seq": ">p1\nMK-UV\n>p2\nACDEFG\n>p3\nWY\n",
          "lab": ">p1 SET=train\nCC-HH\n>p2 SET=train\nEEECCC\n>p3 SET=test\nCC\n"},
         "lab", ["'p1'", "5 positions", "4 residues after cleaning"]),
    ],
)
def test_netsurfp_errors(tmp_path, override, file_key, parts):
    f = netsurfp_files(tmp_path, **override)
    with pytest.raises(InputError) as err:
        load_netsurfp(f["seq"], f["lab"], f["mask"])
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{file_key}.fasta" in msg
    for part in parts:
        assert part in msg


def test_netsurfp_8_state_errors(tmp_path):
    f = netsurfp_files(tmp_path, d8=">p1\n-CGH\n>p2\nEBETSC\n>p3\n-Q\n")
    with pytest.raises(InputError, match=r"d8\.fasta.*'p3'.*'Q' at position 2"):
        load_netsurfp(f["seq"], f["lab"], f["mask"], f["d8"], f["m8"])
    f = netsurfp_files(tmp_path, m8=">p1\n0101\n>p2\n11111\n>p3\n00\n")
    with pytest.raises(InputError, match=r"m8\.fasta.*'p2'.*5 positions.*6 residues"):
        load_netsurfp(f["seq"], f["lab"], f["mask"], f["d8"], f["m8"])
    with pytest.raises(ConfigError):
        load_netsurfp(f["seq"], f["lab"], f["mask"], mask8_path=f["m8"])


def test_netsurfp_invalid_sequence_and_missing_file(tmp_path):
    f = netsurfp_files(tmp_path, seq=">p1\nMK1V\n>p2\nACDEFG\n>p3\nWY\n")
    with pytest.raises(InputError, match=r"seq\.fasta:2.*'p1'.*'1'"):
        load_netsurfp(f["seq"], f["lab"], f["mask"])
    with pytest.raises(InputError, match="no such file"):
        load_netsurfp(tmp_path / "nope.fasta", f["lab"], f["mask"])


# --------------------------------------------------------------------------- ProtTrans CSV

CB_HEADER = "input, dssp3, dssp8, disorder, cb513_mask\n"
CB_ROW_A = "M K L V , C H H E , C G H E , 1.0 1.0 1.0 0.0 , 1.0 1.0 0.0 0.0 \n"
CB_ROW_B = "M K L V , C H H E , C G H E , 1.0 1.0 1.0 1.0 , 0.0 0.0 1.0 1.0 \n"
CB_ROW_C = "A U , C C , T S , 1.0 1.0 , 1.0 1.0 \n"


def test_prottrans_csv(tmp_path):
    path = write(tmp_path / "cb.csv", CB_HEADER + CB_ROW_A + CB_ROW_B + CB_ROW_C)
    recs = load_prottrans_csv(path)
    assert [r.id for r in recs] == ["cb513_row1", "cb513_row2", "cb513_row3"]
    assert all(r.split == "test" for r in recs)
    a = recs[0]
    assert a.sequence == "MKLV"
    assert a.residue_labels == {"dssp3": "CHHE", "dssp8": "CGHE"}
    assert a.residue_masks["dssp3"].tolist() == [1, 1, 0, 0]  # disorder * cb513_mask
    assert a.residue_masks["dssp8"].tolist() == [1, 1, 0, 0]
    assert a.residue_masks["dssp3"].dtype == np.uint8
    assert recs[2].sequence == "AX"
    named = load_prottrans_csv(path, name="ts115")
    assert named[0].id == "ts115_row1"


def test_prottrans_csv_dedupe_merges_domains(tmp_path):
    path = write(tmp_path / "cb.csv", CB_HEADER + CB_ROW_A + CB_ROW_B + CB_ROW_C)
    recs = load_prottrans_csv(path, dedupe=True)
    assert [r.id for r in recs] == ["cb513_row1", "cb513_row3"]
    # same chain, other domain: its scored positions are kept, not silently dropped
    assert recs[0].residue_masks["dssp3"].tolist() == [1, 1, 1, 1]
    assert sum(int(r.mask("dssp3").sum()) for r in recs) == 6
    # rows as given are untouched by a dedupe call on another load
    assert load_prottrans_csv(path)[0].residue_masks["dssp3"].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "body, parts",
    [
        ("M K L , C H H E , C G H E , 1 1 1 1 , 1 1 1 1\n", ["input=3", "dssp3=4"]),
        ("M K L V , C H H E , C G H E , 1 1 2 1 , 1 1 1 1\n", ["disorder", "'2'", "residue 3"]),
        ("M K L V , C H H E , C G H E , 1 1 a 1 , 1 1 1 1\n", ["disorder", "'a'"]),
        ("M K L V , C H Q E , C G H E , 1 1 1 1 , 1 1 1 1\n", ["dssp3", "'Q'", "position 3"]),
        ("M K 1 V , C H H E , C G H E , 1 1 1 1 , 1 1 1 1\n", ["'1'", "residue 3"]),
        ("M K L V , C H H E , C G H E , 1 1 1 1\n", ["4 fields", "header has 5"]),
    ],
)
def test_prottrans_csv_errors(tmp_path, body, parts):
    path = write(tmp_path / "cb.csv", CB_HEADER + CB_ROW_A + body)  # the bad row is row 2
    with pytest.raises(InputError) as err:
        load_prottrans_csv(path)
    msg = str(err.value)
    assert "cb.csv:3" in msg and "row 2" in msg and "cb513_row2" in msg
    for part in parts:
        assert part in msg, msg


def test_prottrans_csv_bad_header(tmp_path):
    path = write(tmp_path / "cb.csv", "input, dssp3, dssp8, disorder\n" + CB_ROW_C)
    with pytest.raises(InputError, match=r"cb\.csv:1.*'cb513_mask'"):
        load_prottrans_csv(path)


# --------------------------------------------------------------------------- DeepLoc


def test_deeploc(tmp_path):
    path = write(
        tmp_path / "loc.fasta",
        ">Q1 Cell.membrane-? train reconstructed_seq=swissprot_2014_01\nMKV\n"
        ">Q2 Cytoplasm-Nucleus-U\nMKVL\n"
        ">Q3 Lysosome/Vacuole-M\nAAA\n"
        ">Q4 Nucleus-S test\nGG\n",
    )
    recs = load_deeploc(path, split="valid")
    by = {r.id: r for r in recs}
    assert by["Q1"].labels == {"location": "Cell.membrane"} and by["Q1"].split == "train"
    assert by["Q2"].labels == {"location": "Cytoplasm-Nucleus"} and by["Q2"].split == "valid"
    assert by["Q3"].labels == {"location": "Lysosome/Vacuole", "membrane": "M"}
    assert by["Q4"].labels == {"location": "Nucleus", "membrane": "S"} and by["Q4"].split == "test"
    assert load_deeploc(path)[1].split is None


@pytest.mark.parametrize(
    "header, parts",
    [
        (">Q9 Nucleus\n", ["'Q9'", "'Nucleus'", "Location-M"]),
        (">Q9 Nucleus-X\n", ["'Q9'", "'Nucleus-X'"]),
        (">Q9\n", ["'Q9'", "no location"]),
        (">Q9 Nucleus-M holdout\n", ["'Q9'", "'holdout'"]),
    ],
)
def test_deeploc_bad_header(tmp_path, header, parts):
    path = write(tmp_path / "loc.fasta", ">Q1 Nucleus-U\nMK\n" + header + "MKV\n")
    with pytest.raises(InputError) as err:
        load_deeploc(path)
    msg = str(err.value)
    assert "loc.fasta:3" in msg
    for part in parts:
        assert part in msg


# --------------------------------------------------------------------------- seq,label CSV


def test_seq_label_csv_kinds(tmp_path):
    path = write(tmp_path / "stability.train.csv", "seq,label\nMKV,0.5\nACDB,-1e-3\n")
    recs = load_seq_label_csv(path, "stability", split="train")
    assert [r.id for r in recs] == ["stability.train_row1", "stability.train_row2"]
    assert recs[0].labels == {"stability": 0.5} and recs[1].labels["stability"] == -0.001
    assert recs[1].sequence == "ACDX" and recs[0].split == "train"
    ints = load_seq_label_csv(write(tmp_path / "rh.csv", "seq,label\nMKV,7\n"), "fold", "int")
    assert ints[0].labels == {"fold": 7} and isinstance(ints[0].labels["fold"], int)
    strs = load_seq_label_csv(write(tmp_path / "scop.csv", "seq,label\nMKV,c\n"), "scop_class", "str")
    assert strs[0].labels == {"scop_class": "c"} and strs[0].split is None
    keep = load_seq_label_csv(path, "stability", policy=CleaningPolicy(rare="keep"))
    assert keep[1].sequence == "ACDB"


@pytest.mark.parametrize(
    "text, kind, parts",
    [
        ("seq,label\nMKV,0.5\nMKV,abc\n", "float", ["x.csv:3", "row 2", "x_row2", "'abc'", "float"]),
        ("seq,label\nMKV,0.5\nMKV,nan\n", "float", ["row 2", "'nan'", "finite"]),
        ("seq,label\nMKV,1\nMKV,1.5\n", "int", ["row 2", "'1.5'", "int"]),
        ("seq,label\nMKV,1\nMKV,\n", "str", ["row 2", "empty"]),
        ("seq,label\nMKV,1\nMK3V,1\n", "float", ["row 2", "'3'", "residue 3"]),
        ("seq,label\nMKV,1\nMKV\n", "float", ["row 2", "1 fields"]),
        ("seq,value\nMKV,1\n", "float", ["x.csv:1", "seq,label"]),
        ("", "float", ["x.csv", "empty"]),
    ],
)
def test_seq_label_csv_errors(tmp_path, text, kind, parts):
    path = write(tmp_path / "x.csv", text)
    with pytest.raises(InputError) as err:
        load_seq_label_csv(path, "t", kind)
    msg = str(err.value)
    for part in parts:
        assert part in msg, msg


def test_seq_label_csv_bad_kind_and_missing(tmp_path):
    with pytest.raises(ConfigError):
        load_seq_label_csv(write(tmp_path / "x.csv", "seq,label\nM,1\n"), "t", "bool")
    with pytest.raises(InputError, match="no such file"):
        load_seq_label_csv(tmp_path / "none.csv", "t")


# --------------------------------------------------------------------------- biotrainer FASTA


def test_biotrainer_per_residue_inferred(tmp_path):
    path = write(
        tmp_path / "bt.fasta",
        ">s1 SET=train TARGET=DDVC MASK=0111\nMKVL\n"
        ">s2 TARGET=VV SET=train VALIDATION=True\nAC\n"
        ">s3 SET=test VALIDATION=False TARGET=CCC\nGGG\n",
    )
    recs = load_biotrainer_fasta(path)
    assert [r.split for r in recs] == ["train", "valid", "test"]
    assert recs[0].residue_labels == {"target": "DDVC"}
    assert recs[0].residue_masks["target"].tolist() == [0, 1, 1, 1]
    assert "target" not in recs[1].residue_masks and recs[1].labels == {}
    # forcing per-protein keeps TARGET as a string label
    recs = load_biotrainer_fasta(path, per_residue=False)
    assert recs[0].labels == {"target": "DDVC"} and recs[0].residue_labels == {}


def test_biotrainer_per_protein_inferred(tmp_path):
    path = write(
        tmp_path / "bt.fasta",
        ">s1 TARGET=Glob SET=train VALIDATION=False\nMKVL\n"
        ">s2 TARGET=Memb SET=test\nACDEF\n",
    )
    recs = load_biotrainer_fasta(path)
    assert [r.labels for r in recs] == [{"target": "Glob"}, {"target": "Memb"}]
    assert all(r.residue_labels == {} for r in recs)
    with pytest.raises(InputError, match=r"bt\.fasta:3.*'s2'.*TARGET has 4.*5 residues"):
        load_biotrainer_fasta(path, per_residue=True)


def test_biotrainer_named_test_sets(tmp_path):
    """biotrainer 1.4: any SET= value other than train/val/test/pred names an extra test set."""
    path = write(
        tmp_path / "bt.fasta",
        ">s1 SET=train TARGET=Glob\nMKVL\n>s2 SET=new364 TARGET=Memb\nACDEF\n>s3 SET=casp12 TARGET=Glob\nMK\n",
    )
    assert [r.split for r in load_biotrainer_fasta(path)] == ["train", "new364", "casp12"]
    bad = write(tmp_path / "bad.fasta", ">s1 SET=new364 VALIDATION=True TARGET=Glob\nMKVL\n")
    with pytest.raises(InputError, match="named test set"):
        load_biotrainer_fasta(bad)


@pytest.mark.parametrize(
    "header, parts",
    [
        (">s2 SET=train\n", ["bt.fasta:3", "'s2'", "no TARGET"]),
        (">s2 TARGET=CC\n", ["'s2'", "no SET"]),
        (">s2 TARGET=CC SET=train junk\n", ["'s2'", "'junk'", "KEY=value"]),
        (">s2 TARGET=CC SET=test VALIDATION=True\n", ["'s2'", "VALIDATION=True"]),
        (">s2 TARGET=CC SET=train MASK=0a\n", ["'s2'", "'a'", "position 2"]),
        (">s2 TARGET=CC SET=train MASK=011\n", ["'s2'", "MASK has 3"]),
        (">s2 TARGET=CC SET=train TARGET=CC\n", ["'s2'", "TARGET given twice"]),
    ],
)
def test_biotrainer_bad_header(tmp_path, header, parts):
    path = write(tmp_path / "bt.fasta", ">s1 SET=train TARGET=CCC\nMKV\n" + header + "MK\n")
    with pytest.raises(InputError) as err:
        load_biotrainer_fasta(path)
    msg = str(err.value)
    for part in parts:
        assert part in msg, msg


# --------------------------------------------------------------------------- registry, summary


def test_registry_missing_file_and_unknown_name(tmp_path):
    assert set(BENCHMARKS) >= {
        "netsurfp", "cb513", "deeploc_train", "deeploc_val", "stability_train",
        "stability_valid", "remote_homology_train", "remote_homology_valid",
        "fluorescence_valid", "scop",
    }
    for name, loader in BENCHMARKS.items():
        with pytest.raises(InputError) as err:
            loader(tmp_path)
        assert str(tmp_path) in str(err.value)
        assert "no such file (is --data pointing at the protlm benchmark data folder?)" in str(err.value)
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        load_benchmark("nope", tmp_path)


def test_registry_on_fixture_folder(tmp_path):
    (tmp_path / "tape").mkdir()
    write(tmp_path / "tape" / "stability.valid.csv", "seq,label\nMKV,0.25\n")
    recs = load_benchmark("stability_valid", tmp_path)
    assert recs[0].labels == {"stability": 0.25} and recs[0].split == "valid"


def test_summarize(tmp_path):
    f = netsurfp_files(tmp_path)
    recs = load_netsurfp(f["seq"], f["lab"], f["mask"], f["d8"], f["m8"])
    s = summarize(recs)
    json.dumps(s)
    assert s["records"] == 3 and s["residues"] == 12
    assert s["splits"] == {"test": 1, "train": 1, "valid": 1}
    d3 = s["residue_labels"]["dssp3"]
    assert d3["positions"] == 12 and d3["scored"] == 11
    assert d3["counts"] == {"C": 6, "E": 3, "H": 2}
    d8 = s["residue_labels"]["dssp8"]
    assert d8["records"] == 2 and d8["scored"] == 8 and "-" not in d8["counts"]
    path = write(tmp_path / "loc.fasta", ">Q1 Nucleus-M\nMK\n>Q2 Nucleus-U\nMKV\n>Q3 Plastid-S\nA\n")
    s = summarize(load_deeploc(path))
    assert s["labels"]["location"]["counts"] == {"Nucleus": 2, "Plastid": 1}
    assert s["labels"]["membrane"] == {"records": 2, "type": "str", "distinct": 2,
                                       "counts": {"M": 1, "S": 1}}
    many = write(tmp_path / "many.csv", "seq,label\n" + "".join(f"MK,{i}\n" for i in range(60)))
    s = summarize(load_seq_label_csv(many, "fold", "str"))
    assert s["labels"]["fold"]["distinct"] == 60 and "counts" not in s["labels"]["fold"]
    s = summarize(load_seq_label_csv(many, "fold", "float"))
    assert s["labels"]["fold"]["min"] == 0.0 and s["labels"]["fold"]["max"] == 59.0
    assert summarize([])["records"] == 0


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(
        os.environ.get("PROTLM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    if not (path / "CATALOG.md").is_file():
        pytest.skip("../shared/data not found: set PROTLM_DATA to the protlm benchmark data folder")
    return path


def test_data_netsurfp(data_dir):
    recs = load_benchmark("netsurfp", data_dir)
    s = summarize(recs)
    assert s["records"] == 11156
    assert s["splits"] == {"train": 9712, "valid": 1080, "test": 364}
    with8 = [r for r in recs if "dssp8" in r.residue_labels]
    assert len(with8) == 8157
    assert sum(r.split == "train" for r in with8) == 7326
    assert sum(r.split == "valid" for r in with8) == 831
    assert all(r.split != "test" for r in with8)
    for r in recs[:200]:
        assert len(r.residue_labels["dssp3"]) == len(r.sequence) == len(r.residue_masks["dssp3"])
    assert set(s["residue_labels"]["dssp3"]["counts"]) == set("HEC")
    assert set(s["residue_labels"]["dssp8"]["counts"]) == set("HGIEBTSC")


def test_data_cb513(data_dir):
    recs = load_benchmark("cb513", data_dir)
    assert len(recs) == 511
    assert recs[0].id == "cb513_row1" and recs[-1].id == "cb513_row511"
    assert len({r.sequence for r in recs}) == 432
    deduped = load_prottrans_csv(data_dir / "secondary_structure" / "CB513_HHblits.csv", dedupe=True)
    assert len(deduped) == 432
    scored = sum(int(r.mask("dssp3").sum()) for r in recs)
    assert scored == sum(int(r.mask("dssp3").sum()) for r in deduped)


def test_data_deeploc(data_dir):
    train = load_benchmark("deeploc_train", data_dir)
    val = load_benchmark("deeploc_val", data_dir)
    assert len(train) == 8758 and len(val) == 1678
    assert {r.split for r in train} == {"train"} and {r.split for r in val} == {"valid"}
    assert len({r.labels["location"] for r in train}) == 10
    assert all("membrane" not in r.labels for r in train)
    locations = summarize(val)["labels"]["location"]["counts"]
    assert locations["Cytoplasm-Nucleus"] == 23
    assert {r.labels.get("membrane") for r in val} == {"M", "S", None}


@pytest.mark.parametrize(
    "name, count, task",
    [
        ("stability_train", 53614, "stability"),
        ("stability_valid", 2512, "stability"),
        ("remote_homology_train", 12312, "fold"),
        ("remote_homology_valid", 736, "fold"),
        ("fluorescence_valid", 5362, "fluorescence"),
        ("scop", 15680, "scop_class"),
    ],
)
def test_data_csv_sets(data_dir, name, count, task):
    recs = load_benchmark(name, data_dir)
    assert len(recs) == count
    assert all(task in r.labels for r in recs)
    s = summarize(recs)["labels"][task]
    if name == "remote_homology_train":
        assert s["type"] == "int" and s["distinct"] == 1195
    if name == "scop":
        assert set(s["counts"]) == set("abcdefg")
