"""Checkpoints written by protlm load in transformers 4.x with the same outputs (issue 15 item 13).

transformers 5 saves fast tokenizers as ``TokenizersBackend`` and GPT-NeoX's rotary settings as
``rope_parameters``; transformers 4.57 cannot load the first and silently reads the second as
its defaults (rotary_pct 0.25), and biotrainer picks the model class from the tokenizer class.
This test writes a tiny checkpoint of every architecture that has a 4.x class, then loads it in
a separate environment with transformers 4.x and compares token ids and hidden states.

The 4.x environment is not part of the install; make one with::

    python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install "transformers==4.57.*"
    # torch: install it there too, or borrow this venv's (same Python version):
    echo "$PWD/.venv/lib/python3.X/site-packages" > /tmp/tf4/lib/python3.X/site-packages/zz_torch.pth

and point ``PROTLM_TF4_PYTHON`` at its python (default ``/tmp/tf4/bin/python``). The test skips
when that interpreter is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

TF4 = Path(os.environ.get("PROTLM_TF4_PYTHON", "/tmp/tf4/bin/python"))
ROOT = Path(__file__).resolve().parents[2]
SEQ = "MKTAYIAKQRQISFVKSHFSRQUZ"

pytestmark = pytest.mark.skipif(not TF4.exists(), reason=f"no transformers 4.x environment at {TF4} "
                                                          "(see this file's docstring); set PROTLM_TF4_PYTHON")

LOADER = r"""
import json, sys
import numpy as np, torch, transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
assert transformers.__version__.startswith("4."), transformers.__version__
out = {}
for folder, text in json.loads(sys.argv[1]):
    tok = AutoTokenizer.from_pretrained(folder)
    cls = T5EncoderModel if AutoConfig.from_pretrained(folder).model_type == "t5" else AutoModel
    model = cls.from_pretrained(folder).eval()
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state[0]
    out[folder] = {"tokenizer": type(tok).__name__, "ids": ids["input_ids"][0].tolist(), "hidden": h.tolist()}
print(json.dumps(out))
"""


def _v5_outputs(folder: Path, text: str) -> tuple[list[int], np.ndarray]:
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(folder)
    t5 = json.loads((folder / "config.json").read_text())["model_type"] == "t5"
    model = (T5EncoderModel if t5 else AutoModel).from_pretrained(folder).eval()
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state[0]
    return ids["input_ids"][0].tolist(), h.numpy()


def _load_in_tf4(items: list[tuple[Path, str]]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(TF4), "-c", LOADER, json.dumps([(str(f), t) for f, t in items])],
                       capture_output=True, text=True, timeout=600, env=env, cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint folder of each architecture, written the way pretraining writes them."""
    from protlm.models.architectures import ARCHITECTURES, ModelSpec, build_model
    from protlm.pretrain.checkpoint import write_hf_folder

    root = tmp_path_factory.mktemp("tf4")
    out = {}
    for arch in ("esm", "causal", "bert", "albert", "t5", "xlnet"):  # txl: protlm's own class, no 4.x one
        if arch not in ARCHITECTURES:
            continue
        torch.manual_seed(0)
        model = build_model(ModelSpec(arch=arch, preset="tiny", max_positions=300))
        write_hf_folder(root / arch, model, model.state_dict(), ARCHITECTURES[arch].vocab.family, "{}\n")
        out[arch] = root / arch
    return out


def _text(folder: Path) -> str:
    spaced = json.loads((folder / "config.json").read_text())["model_type"] in ("bert", "albert", "t5", "xlnet")
    return " ".join(SEQ) if spaced else SEQ


def test_tokenizer_files_are_the_ones_4x_reads(written):
    esm = json.loads((written["esm"] / "tokenizer_config.json").read_text())
    # ESM: ESM-2's own EsmTokenizer with a vocab.txt protlm writes from its vocabulary, so that tools
    # picking the model class from the tokenizer class (biotrainer) pick EsmModel (docs/interop.md)
    assert esm["tokenizer_class"] == "EsmTokenizer" and (written["esm"] / "vocab.txt").exists()
    causal = json.loads((written["causal"] / "tokenizer_config.json").read_text())
    assert causal["tokenizer_class"] == "PreTrainedTokenizerFast"
    config = json.loads((written["causal"] / "config.json").read_text())
    assert config["rotary_pct"] == 1.0 and config["rotary_emb_base"] == 10000.0
    for folder in written.values():
        assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] != "TokenizersBackend"


COMMITTED = [ROOT / "checkpoints" / n for n in ("protlm-swissprot-masked-xs", "protlm-swissprot-causal-xs")]


@pytest.fixture(scope="module")
def tf4(written) -> dict:
    """Everything loaded in one transformers 4.x process (its start-up is most of the cost)."""
    items = [(f, _text(f)) for f in written.values()]
    return _load_in_tf4(items + [(f, SEQ) for f in COMMITTED])


def test_written_checkpoints_give_the_same_outputs_in_transformers_4(written, tf4):
    items = [(f, _text(f)) for f in written.values()]
    got = tf4
    for folder, text in items:
        ids, hidden = _v5_outputs(folder, text)
        old = got[str(folder)]
        assert old["ids"] == ids, folder.name
        np.testing.assert_allclose(np.array(old["hidden"]), hidden, atol=1e-4, err_msg=folder.name)
    assert got[str(written["esm"])]["tokenizer"] == "EsmTokenizer"


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda f: f.name)
def test_committed_checkpoints_load_in_transformers_4(folder, tf4):
    got = tf4[str(folder)]
    ids, hidden = _v5_outputs(folder, SEQ)
    assert got["ids"] == ids
    np.testing.assert_allclose(np.array(got["hidden"]), hidden, atol=1e-4)
