"""The streaming FASTA reader: cleaning policy, gzip, block cutting, and every error message."""

from __future__ import annotations

import gzip
import random
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protlm.data.fasta as fasta_mod
from protlm.data.alphabet import ALPHABET, CleaningPolicy
from protlm.data.fasta import (
    FastaRecord,
    FastaStats,
    encode_block,
    iter_record_blocks,
    read_fasta,
    read_fasta_raw,
    split_block,
)
from protlm.errors import FastaError, InputError, ProtlmError

RARE_TO_X = str.maketrans("BOUZ", "XXXX")


def write(path, data: bytes | str):
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def records(path, **kw) -> list[tuple[str, str]]:
    return [(r.id, r.sequence) for r in read_fasta(path, **kw)]


def fasta_error(path, **kw) -> str:
    with pytest.raises(FastaError) as info:
        list(read_fasta(path, **kw))
    msg = str(info.value)
    assert "\n" not in msg, "errors are one line"
    return msg


# --------------------------------------------------------------------------- good input


def test_multiline_records_description_and_line_numbers(tmp_path):
    p = write(
        tmp_path / "a.fasta",
        ">sp|P1|ONE first protein  OS=Homo sapiens\nMKV\nLAA\nG\n>P2\nACDEFGHIKLMNPQRSTVWY\n>P3 third\nWW\n",
    )
    recs = list(read_fasta(p))
    assert recs == [
        FastaRecord("sp|P1|ONE", "MKVLAAG", "sp|P1|ONE first protein  OS=Homo sapiens", 1),
        FastaRecord("P2", "ACDEFGHIKLMNPQRSTVWY", "P2", 5),
        FastaRecord("P3", "WW", "P3 third", 7),
    ]
    assert len(recs[0]) == 7


def test_crlf_lowercase_whitespace_and_tabs(tmp_path):
    p = write(tmp_path / "a.fa", b">P1 desc\r\nmk v\r\n\tl a A \r\n>P2\r\nacd\r\n")
    recs = list(read_fasta(p))
    assert [(r.id, r.sequence, r.description, r.line) for r in recs] == [
        ("P1", "MKVLAA", "P1 desc", 1),
        ("P2", "ACD", "P2", 4),
    ]


def test_header_separated_by_tab_and_leading_space(tmp_path):
    p = write(tmp_path / "a.fa", ">P1\tsome desc\nAC\n> P2 other\nDE\n")
    assert [(r.id, r.description) for r in read_fasta(p)] == [("P1", "P1\tsome desc"), ("P2", "P2 other")]


def test_terminal_stops_removed(tmp_path):
    p = write(tmp_path / "a.fa", ">P1\nMKV*\n>P2\nMK\nV**\n>P3\nMKV*\n-\n  \n>P4\nMK*-.*\n")
    assert records(p) == [("P1", "MKV"), ("P2", "MKV"), ("P3", "MKV"), ("P4", "MK")]


def test_gaps_removed(tmp_path):
    p = write(tmp_path / "a.fa", ">P1\n--MK-V..\n.L-\n")
    assert records(p) == [("P1", "MKVL")]


def test_rare_residues_mapped_or_kept(tmp_path):
    p = write(tmp_path / "a.fa", ">P1\nABOUZX\n>P2\nbouz\n")
    assert records(p) == [("P1", "AXXXXX"), ("P2", "XXXX")]
    assert records(p, policy=CleaningPolicy("X")) == [("P1", "AXXXXX"), ("P2", "XXXX")]
    assert records(p, policy=CleaningPolicy("keep")) == [("P1", "ABOUZX"), ("P2", "BOUZ")]


def test_bad_rare_policy_is_config_error():
    from protlm.errors import ConfigError

    with pytest.raises(ConfigError, match="rare"):
        CleaningPolicy("drop")


def test_blank_lines_everywhere(tmp_path):
    p = write(tmp_path / "a.fa", "\n\n>P1\n\nAC\n\n\n>P2\nDE\n\n")
    recs = list(read_fasta(p))
    assert [(r.id, r.sequence, r.line) for r in recs] == [("P1", "AC", 3), ("P2", "DE", 8)]


def test_no_trailing_newline(tmp_path):
    p = write(tmp_path / "a.fa", ">P1\nAC\n>P2\nDE")
    assert records(p) == [("P1", "AC"), ("P2", "DE")]


def test_gzip_detected_by_magic_not_name(tmp_path):
    text = b">P1 d\nMKV\nL\n>P2\nAC*\n"
    for name in ("a.fa.gz", "a.fa", "a.txt"):
        p = write(tmp_path / name, gzip.compress(text))
        recs = list(read_fasta(p))
        assert [(r.id, r.sequence, r.line) for r in recs] == [("P1", "MKVL", 1), ("P2", "AC", 4)]
    # and a plain file named .gz is read as plain text
    p = write(tmp_path / "plain.fa.gz", text)
    assert records(p) == [("P1", "MKVL"), ("P2", "AC")]


def test_multi_member_gzip(tmp_path):
    a = gzip.compress(b">P1\nMK")  # the record continues in the next member
    b = gzip.compress(b"V\n>P2\nAC\n")
    c = gzip.compress(b"")  # an empty member is legal too
    d = gzip.compress(b">P3\nWW\n")
    p = write(tmp_path / "multi.fa", a + b + c + d)
    assert records(p) == [("P1", "MKV"), ("P2", "AC"), ("P3", "WW")]


def test_multi_member_gzip_across_read_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 7)
    parts = [gzip.compress(f">P{i}\n{'ACDEFGHIK' * i}\n".encode()) for i in range(1, 30)]
    p = write(tmp_path / "multi.fa.gz", b"".join(parts))
    assert records(p) == [(f"P{i}", "ACDEFGHIK" * i) for i in range(1, 30)]


def test_raw_reader_keeps_labels(tmp_path):
    p = write(tmp_path / "lab.fa", ">P1 x\nCCH H\r\nE-*1\n>P2\n0101\n")
    recs = list(read_fasta_raw(p))
    assert [(r.id, r.sequence, r.line) for r in recs] == [("P1", "CCHHE-*1", 1), ("P2", "0101", 4)]


def test_stats_are_filled(tmp_path):
    p = write(tmp_path / "a.fa", ">P1\nMKV\n>P2\nAC\n")
    stats = FastaStats()
    list(read_fasta(p, stats=stats))
    assert (stats.records, stats.residues, stats.skipped, stats.renamed) == (2, 5, 0, 0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body, bad, col",
    [("MKJV", "'J'", 3), ("MK1V", "'1'", 3), ("MK#V", "'#'", 3), ("MKVé", "byte 0xc3", 4)],
)
def test_invalid_character(tmp_path, body, bad, col):
    p = write(tmp_path / "bad.fa", f">P1\nAC\n>P2 desc\nAAAA\n{body}\n>P3\nAC\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:5: ")
    assert "record 'P2'" in msg
    assert f"invalid character {bad}" in msg
    assert f"column {col}" in msg
    assert f"residue {4 + col}" in msg


def test_invalid_character_in_gzip_names_line(tmp_path):
    p = write(tmp_path / "bad.fa.gz", gzip.compress(b">P1\nAC\n>P2\nAC\nAJ\n"))
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:5: ") and "'P2'" in msg and "'J'" in msg


def test_stop_inside_sequence(tmp_path):
    p = write(tmp_path / "stop.fa", ">P1\nMK*V\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:2: ")
    assert "record 'P1'" in msg and "'*'" in msg and "inside" in msg and "column 3" in msg


def test_stop_inside_sequence_across_lines(tmp_path):
    p = write(tmp_path / "stop.fa", ">P1\nMK*\nV\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:2: ") and "'*'" in msg and "residue 3" in msg


def test_sequence_before_first_header(tmp_path):
    p = write(tmp_path / "nohdr.fa", "\nMKV\n>P1\nAC\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:2: ") and "before the first '>' header" in msg


def test_plain_text_file_is_not_fasta(tmp_path):
    p = write(tmp_path / "notes.txt", "hello world\nthis is not fasta\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:1: ") and "header" in msg


@pytest.mark.parametrize(
    "text, line",
    [
        (">P1\nAC\n>P2\n>P3\nAC\n", 3),  # header followed by header
        (">P1\nAC\n>P2\n", 3),  # last record without sequence
        (">P1\nAC\n>P2", 3),  # last header without a newline
        (">P1\nAC\n>P2\n\n  \n", 3),  # only blank lines
        (">P1\nAC\n>P2\n--..\n", 3),  # only gaps
        (">P1\nAC\n>P2\n**\n", 3),  # only stops
    ],
)
def test_empty_record(tmp_path, text, line):
    p = write(tmp_path / "empty.fa", text)
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:{line}: ")
    assert "record 'P2'" in msg and "empty sequence" in msg


@pytest.mark.parametrize("header", [">", ">   ", ">\t"])
def test_header_without_id(tmp_path, header):
    p = write(tmp_path / "noid.fa", f">P1\nAC\n{header}\nMKV\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:3: ") and "no id" in msg


def test_duplicate_ids(tmp_path):
    p = write(tmp_path / "dup.fa", ">P1\nAC\n>P2\nDE\n>P1 again\nFG\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:5: ")
    # the library names no CLI flag; the commands that take --rename-duplicates add it (test_safety)
    assert "duplicate id 'P1'" in msg and "line 1" in msg and "ids must be unique" in msg


def test_rename_duplicates(tmp_path):
    p = write(tmp_path / "dup.fa", ">P1\nAC\n>P2\nDE\n>P1 again\nFG\n>P1\nHH\n")
    stats = FastaStats()
    recs = list(read_fasta(p, rename_duplicates=True, stats=stats))
    assert [(r.id, r.sequence, r.line) for r in recs] == [
        ("P1", "AC", 1), ("P2", "DE", 3), ("P1_2", "FG", 5), ("P1_3", "HH", 7)
    ]
    assert recs[2].description == "P1 again"
    assert stats.renamed == 2


def test_rename_duplicates_avoids_existing_ids(tmp_path):
    p = write(tmp_path / "dup.fa", ">P1_2\nAC\n>P1\nDE\n>P1\nFG\n")
    assert [r.id for r in read_fasta(p, rename_duplicates=True)] == ["P1_2", "P1", "P1_3"]


def test_raw_reader_rejects_duplicate_ids(tmp_path):
    p = write(tmp_path / "dup.fa", ">P1\nAC\n>P1\nDE\n")
    with pytest.raises(FastaError, match="duplicate id 'P1'"):
        list(read_fasta_raw(p))


def test_binary_file(tmp_path):
    rng = random.Random(7)
    data = b"\x00\x01" + bytes(rng.randrange(256) for _ in range(5000)) + b"\x00" * 10
    p = write(tmp_path / "image.fa", data)
    msg = fasta_error(p)
    assert msg.startswith(f"{p}: ") and "binary" in msg


def test_binary_file_inside_gzip(tmp_path):
    p = write(tmp_path / "bin.gz", gzip.compress(b">P1\n\x00\x00\x00\n"))
    msg = fasta_error(p)
    assert str(p) in msg and "binary" in msg


def test_nul_beyond_the_sniffed_head_is_an_invalid_character(tmp_path):
    p = write(tmp_path / "late.fa", b">P1\n" + b"A" * 70000 + b"\x00\n")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:2: ") and "byte 0x00" in msg


def test_empty_file(tmp_path):
    p = write(tmp_path / "empty.fa", b"")
    msg = fasta_error(p)
    assert msg.startswith(f"{p}: ") and "empty" in msg


def test_empty_gzip_file(tmp_path):
    p = write(tmp_path / "empty.fa.gz", gzip.compress(b""))
    msg = fasta_error(p)  # a valid gzip stream holding nothing is an empty file too
    assert msg.startswith(f"{p}: ") and "empty" in msg


@pytest.mark.parametrize("cut", [10, 30, -4])
def test_truncated_gzip(tmp_path, cut):
    rng = random.Random(3)
    text = b"".join(
        b">P%d\n%s\n" % (i, "".join(rng.choice(ALPHABET[:20]) for _ in range(200)).encode())
        for i in range(200)
    )
    data = gzip.compress(text)
    p = write(tmp_path / "cut.fa.gz", data[:cut] if cut > 0 else data[:cut])
    msg = fasta_error(p)
    assert str(p) in msg and "gzip" in msg


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(b">P1\n" + b"ACDEFGHIK" * 1000 + b"\n"))
    data[12:40] = b"\xff" * 28
    p = write(tmp_path / "bad.gz", bytes(data))
    msg = fasta_error(p)
    assert str(p) in msg and "gzip" in msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.fa"
    with pytest.raises(InputError) as info:
        list(read_fasta(p))
    assert str(info.value) == f"{p}: no such file"


def test_directory(tmp_path):
    with pytest.raises(InputError) as info:
        list(read_fasta(tmp_path))
    assert str(tmp_path) in str(info.value) and "directory" in str(info.value)


def test_errors_are_protlm_errors():
    assert issubclass(FastaError, InputError) and issubclass(InputError, ProtlmError)


# --------------------------------------------------------------------------- skip_invalid


def test_skip_invalid_skips_and_counts(tmp_path):
    p = write(
        tmp_path / "mixed.fa",
        ">P1\nMKV\n>P2\nMJV\n>P3\nAC\n>P4\n>P5\nA*C\n>P6\nDE*\n>P7\n1\n",
    )
    stats = FastaStats()
    recs = list(read_fasta(p, skip_invalid=True, stats=stats))
    assert [(r.id, r.sequence, r.line) for r in recs] == [
        ("P1", "MKV", 1), ("P3", "AC", 5), ("P6", "DE", 10)
    ]
    assert stats.skipped == 4
    assert stats.records == 3 and stats.residues == 7
    assert len(stats.skipped_messages) == 4
    assert stats.skipped_messages[0].startswith(f"{p}:4: record 'P2'")
    assert "'J'" in stats.skipped_messages[0]
    assert any("'P4'" in m and "empty" in m for m in stats.skipped_messages)


def test_skip_invalid_does_not_hide_structural_errors(tmp_path):
    p = write(tmp_path / "dup.fa", ">P1\nAC\n>P1\nAC\n")
    with pytest.raises(FastaError, match="duplicate"):
        list(read_fasta(p, skip_invalid=True))


def test_skip_invalid_keeps_only_first_20_messages(tmp_path):
    p = write(tmp_path / "many.fa", "".join(f">P{i}\nAJ\n" for i in range(30)) + ">ok\nAC\n")
    stats = FastaStats()
    assert records(p, skip_invalid=True, stats=stats) == [("ok", "AC")]
    assert stats.skipped == 30 and len(stats.skipped_messages) == 20


# --------------------------------------------------------------------------- block cutting


def _one_block(path, tables, **kw):
    data = b"".join(fasta_mod.iter_file_blocks(path))
    return encode_block(data, 1, str(path), tables, FastaStats(), **kw)


def _many_blocks(path, tables, target, **kw):
    parts = [
        encode_block(b, line, str(path), tables, FastaStats(), **kw)
        for b, line in iter_record_blocks(path, target_size=target)
    ]
    return parts


def _joined(parts):
    return (
        np.concatenate([p.tokens for p in parts]) if parts else np.zeros(0, np.uint8),
        np.concatenate([p.lengths for p in parts]).tolist(),
        [i for p in parts for i in p.ids],
        [h for p in parts for h in p.headers],
        np.concatenate([p.lines for p in parts]).tolist(),
    )


def _messy_fasta(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        nl = rng.choice([b"\n", b"\r\n"])
        seq = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 90)))
        if rng.random() < 0.3:
            seq = seq.lower()
        width = rng.randint(1, 40)
        lines = [seq[j : j + width].encode() for j in range(0, len(seq), width)]
        if rng.random() < 0.3:
            lines[-1] += b"*"
        out.append(b">id%d desc %d" % (i, i) + nl)
        for ln in lines:
            out.append(ln + nl)
            if rng.random() < 0.1:
                out.append(nl)
    return b"".join(out)


@pytest.mark.parametrize("gz", [False, True])
def test_blocks_cut_anywhere_equal_one_block_parse(tmp_path, gz):
    data = _messy_fasta(300, seed=1)
    p = write(tmp_path / "m.fa", gzip.compress(data) if gz else data)
    tables = CleaningPolicy().tables
    ref = _joined([_one_block(p, tables)])
    assert len(ref[1]) == 300
    for target in (1, 2, 3, 5, 17, 64, 100, 1000, 5000, len(data) - 1, len(data), 10**9):
        parts = _many_blocks(p, tables, target)
        got = _joined(parts)
        assert got[0].tobytes() == ref[0].tobytes(), target
        assert got[1:] == ref[1:], target
        if target <= 5:
            assert len(parts) == 300  # every record its own block
        for block, _line in list(iter_record_blocks(p, target_size=target))[1:]:
            assert block.startswith(b">")


def test_blocks_agree_with_read_fasta_line_numbers(tmp_path, monkeypatch):
    data = _messy_fasta(200, seed=2)
    p = write(tmp_path / "m.fa", data)
    # line of each header, counted directly
    expected = [i + 1 for i, ln in enumerate(data.split(b"\n")) if ln.startswith(b">")]
    assert [r.line for r in read_fasta(p)] == expected
    tables = CleaningPolicy().tables
    for target in (1, 10, 333):
        assert _joined(_many_blocks(p, tables, target))[4] == expected
    # small file reads, so records also span the raw read boundaries
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 13)
    for target in (1, 10, 333, 10**6):
        assert _joined(_many_blocks(p, tables, target))[4] == expected
    assert [r.line for r in read_fasta(p)] == expected


def test_blocks_across_small_gzip_reads(tmp_path, monkeypatch):
    data = _messy_fasta(150, seed=3)
    p = write(tmp_path / "m.fa.gz", gzip.compress(data))
    ref = [(r.id, r.sequence, r.line) for r in read_fasta(p)]
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 11)
    assert [(r.id, r.sequence, r.line) for r in read_fasta(p)] == ref
    tables = CleaningPolicy().tables
    got = _joined(_many_blocks(p, tables, 50))
    assert got[4] == [r[2] for r in ref]


def test_split_block_equals_one_parse(tmp_path):
    data = _messy_fasta(120, seed=4)
    tables = CleaningPolicy().tables
    ref = _joined([encode_block(data, 1, "x", tables, FastaStats())])
    for target in (1, 7, 200, 10**6):
        parts = [
            encode_block(sub, 1 + off, "x", tables, FastaStats())
            for sub, off in split_block(data, target)
        ]
        got = _joined(parts)
        assert got[0].tobytes() == ref[0].tobytes()
        assert got[1:] == ref[1:]


def test_error_line_numbers_in_later_blocks(tmp_path, monkeypatch):
    body = "".join(f">P{i}\nACDEF\nGHIK\n" for i in range(500)) + ">bad\nAC\nAXJ\n"
    p = write(tmp_path / "late.fa", body)
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 100)
    msg = fasta_error(p)
    assert msg.startswith(f"{p}:1503: record 'bad'") and "'J'" in msg and "column 3" in msg
    tables = CleaningPolicy().tables
    with pytest.raises(FastaError) as info:
        for b, line in iter_record_blocks(p, target_size=64):
            encode_block(b, line, str(p), tables, FastaStats())
    assert str(info.value) == msg


def test_block_boundaries_depend_only_on_content(tmp_path, monkeypatch):
    data = _messy_fasta(100, seed=5)
    p = write(tmp_path / "m.fa", data)
    q = write(tmp_path / "m.fa.gz", gzip.compress(data))
    ref = list(iter_record_blocks(p, target_size=300))
    assert list(iter_record_blocks(q, target_size=300)) == ref
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 37)
    assert list(iter_record_blocks(p, target_size=300)) == ref
    assert list(iter_record_blocks(q, target_size=300)) == ref
    assert b"".join(b for b, _ in ref) == data


# --------------------------------------------------------------------------- properties

ID = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_|.:-", min_size=1, max_size=12)
SEQ = st.text(alphabet=ALPHABET, min_size=1, max_size=150)
ENTRIES = st.lists(st.tuples(ID, SEQ), min_size=1, max_size=25, unique_by=lambda e: e[0])


def _render(draw, entries) -> tuple[bytes, list[int]]:
    nl = draw(st.sampled_from([b"\n", b"\r\n"]))
    mixed_nl = draw(st.booleans())
    out, lines, line = [], [], 1
    for rid, seq in entries:
        chars = list(seq)
        case = draw(st.sampled_from(["upper", "lower", "mixed"]))
        if case == "mixed":  # a random mask, drawn as one seed (fast to generate)
            rng = random.Random(draw(st.integers(0, 2**32)))
            chars = [c.lower() if rng.random() < 0.5 else c for c in chars]
        elif case == "lower":
            chars = [c.lower() for c in chars]
        gaps = draw(st.lists(st.tuples(st.integers(0, len(chars)), st.sampled_from("-.")), max_size=5))
        for pos, g in sorted(gaps, reverse=True):
            chars.insert(pos, g)
        text = "".join(chars) + draw(st.sampled_from(["", "", "*", "**", "*-"]))
        width = draw(st.integers(1, 80))
        desc = draw(st.sampled_from(["", " desc", "\tx y z", " "]))
        lines.append(line)
        this_nl = (draw(st.sampled_from([b"\n", b"\r\n"])) if mixed_nl else nl)
        out.append(f">{rid}{desc}".encode() + this_nl)
        line += 1
        for j in range(0, len(text), width):
            out.append(text[j : j + width].encode() + this_nl)
            line += 1
        if draw(st.booleans()):
            out.append(this_nl)
            line += 1
    return b"".join(out), lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, data=st.data(), gz=st.booleans(), keep=st.booleans())
def test_property_read_fasta_returns_cleaned_records(tmp_path, entries, data, gz, keep):
    raw, lines = _render(data.draw, entries)
    if gz:
        cut = data.draw(st.integers(0, len(raw)))
        raw = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:])  # maybe two members
    p = write(tmp_path / "prop.fa", raw)
    policy = CleaningPolicy("keep" if keep else "X")
    got = [(r.id, r.sequence, r.line) for r in read_fasta(p, policy)]
    expected = [
        (rid, seq.upper() if keep else seq.upper().translate(RARE_TO_X), line)
        for (rid, seq), line in zip(entries, lines)
    ]
    assert got == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, data=st.data(), target=st.integers(1, 400))
def test_property_blocks_equal_one_parse(tmp_path, entries, data, target):
    raw, lines = _render(data.draw, entries)
    p = write(tmp_path / "prop.fa", raw)
    tables = CleaningPolicy().tables
    got = _joined(_many_blocks(p, tables, target))
    ref = _joined([_one_block(p, tables)])
    assert got[0].tobytes() == ref[0].tobytes()
    assert got[1:] == ref[1:]
    assert got[4] == lines


FASTA_BYTES = st.lists(
    st.sampled_from([b">", b"\n", b"\r\n", b" ", b"\t", b"A", b"c", b"*", b"-", b".", b"P1",
                     b"J", b"1", b"\x00", b"\xff", b"\x1f\x8b", b"> ", b">P1 d\n"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), FASTA_BYTES), mode=st.sampled_from(["plain", "gzip", "cut-gzip"]),
       skip=st.booleans(), cut=st.integers(0, 10**6))
def test_property_arbitrary_bytes_only_raise_protlm_errors(tmp_path, data, mode, skip, cut):
    if mode == "gzip":
        data = gzip.compress(data)
    elif mode == "cut-gzip":
        z = gzip.compress(data)
        data = z[: cut % (len(z) + 1)]
    p = write(tmp_path / "any.fa", data)
    for reader, kw in ((read_fasta, {"skip_invalid": skip, "rename_duplicates": skip}), (read_fasta_raw, {})):
        try:
            recs = list(reader(p, **kw))
        except ProtlmError as exc:
            assert "\n" not in str(exc)
            assert str(p) in str(exc)
        else:
            for r in recs:
                assert r.id and not set(r.id) & set(" \t\r\n\v\f")  # ASCII whitespace ends an id
                if reader is read_fasta:
                    assert r.sequence and set(r.sequence) <= set(ALPHABET)


def test_zlib_and_isal_agree_on_truncation(tmp_path, monkeypatch):
    """The fallback inflater (plain zlib) reports the same errors as ISA-L."""
    monkeypatch.setattr(fasta_mod, "_zlib", zlib)
    data = gzip.compress(b">P1\n" + b"ACDEFGHIK" * 500 + b"\n")
    p = write(tmp_path / "cut.gz", data[:-6])
    assert "truncated gzip" in fasta_error(p)
    p = write(tmp_path / "ok.gz", data + gzip.compress(b">P2\nAC\n"))
    assert [r.id for r in read_fasta(p)] == ["P1", "P2"]


def test_nucleotide_sequences_are_reported_once_and_still_read(tmp_path, caplog):
    """DNA given where proteins are expected: valid letters, so read, but one warning names the
    first such record; poly-Ala, a GA repeat and short peptides are not reported."""
    import logging

    path = tmp_path / "mixed.fa"
    path.write_text(">p\nMKTAYIAKQRQISFVKSHFSRQ\n>d1\nACGTACGTTAGCATCGATCGATCGATCGATGCATGCA\n>d2\n" + "ACGU" * 10
                    + "\n>polyA\n" + "A" * 40 + "\n>ga\n" + "GA" * 20 + "\n>short\nACGTACGT\n")
    stats = FastaStats()
    with caplog.at_level(logging.WARNING, logger="protlm.data.fasta"):
        records = list(read_fasta(path, CleaningPolicy(rare="keep"), stats=stats))
    assert [r.id for r in records] == ["p", "d1", "d2", "polyA", "ga", "short"]
    assert stats.nucleotide_like == 2
    (msg,) = [r.getMessage() for r in caplog.records if "nucleotide" in r.getMessage()]
    assert "2 of 6 records" in msg and "'d1' at line 3" in msg
    caplog.clear()
    path.write_text(">p\nMKTAYIAKQR\n>polyA\n" + "A" * 40 + "\n")
    with caplog.at_level(logging.WARNING, logger="protlm.data.fasta"):
        list(read_fasta(path))
    assert "nucleotide" not in caplog.text
