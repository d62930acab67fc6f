"""``protlm export``: write a checkpoint's weights in another project's layout.

``protlm export --format fair-esm CHECKPOINT --out FILE.safetensors`` writes an ESM checkpoint
(``model_type: esm``, ESM-2 shape: rotary positions, pre-LayerNorm, FFN 4 × width, 33-token
ESM-1b alphabet) as fair-esm's ``ESM2`` state dict — fair-esm's key names
(``embed_tokens.weight``, ``layers.0.self_attn.q_proj.weight``, ``emb_layer_norm_after.weight``,
``lm_head.weight``, ...) — in safetensors (never a pickle), and ``FILE.json`` with the
constructor arguments (``num_layers``, ``embed_dim``, ``attention_heads``, ``alphabet``,
``token_dropout``; also in the safetensors metadata). docs/interop.md shows how to load it::

    model = esm.model.esm2.ESM2(**json.load(open("FILE.json"))["args"])
    model.load_state_dict(safetensors.torch.load_file("FILE.safetensors"))

Other families have no fair-esm class: refused with one line (exit 2), as are an ``--out`` inside
the checkpoint folder (even with ``--overwrite``), a damaged safetensors file and encoder layers
that config.json does not have.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from protlm.cli.common import add_out, json_parent, overwrite_parent

#: Hugging Face ESM name → fair-esm ESM2 name (``{i}``: the layer). Derived from the two
#: projects' module layouts (transformers' EsmForMaskedLM, fair-esm's esm/model/esm2.py).
_LAYER = [
    ("attention.self.query", "self_attn.q_proj"),
    ("attention.self.key", "self_attn.k_proj"),
    ("attention.self.value", "self_attn.v_proj"),
    ("attention.self.rotary_embeddings", "self_attn.rot_emb"),
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.LayerNorm", "self_attn_layer_norm"),
    ("intermediate.dense", "fc1"),
    ("output.dense", "fc2"),
    ("LayerNorm", "final_layer_norm"),
]
_TOP = [
    ("esm.embeddings.word_embeddings", "embed_tokens"),
    ("esm.encoder.emb_layer_norm_after", "emb_layer_norm_after"),
    ("esm.contact_head.regression", "contact_head.regression"),
    ("lm_head.dense", "lm_head.dense"),
    ("lm_head.layer_norm", "lm_head.layer_norm"),
    ("lm_head.decoder", "lm_head"),
]
_LAYER_KEY = re.compile(r"^esm\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias|inv_freq)$")


def fair_esm_key(key: str) -> str | None:
    """fair-esm's name of one (canonical) Hugging Face ESM key; None for keys fair-esm lacks."""
    if key == "lm_head.bias":
        return "lm_head.bias"
    m = _LAYER_KEY.match(key)
    if m:
        i, module, leaf = m.groups()
        for hf, fair in _LAYER:
            if module == hf:
                return f"layers.{i}.{fair}.{leaf}"
        return None
    module, _, leaf = key.rpartition(".")
    for hf, fair in _TOP:
        if module == hf:
            return f"{fair}.{leaf}"
    return None


def hf_esm_key(key: str) -> str | None:
    """The inverse of :func:`fair_esm_key` (for round-trip checks)."""
    if key == "lm_head.bias":
        return key
    m = re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias|inv_freq)$", key)
    if m:
        i, module, leaf = m.groups()
        for hf, fair in _LAYER:
            if module == fair:
                return f"esm.encoder.layer.{i}.{hf}.{leaf}"
        return None
    module, _, leaf = key.rpartition(".")
    for hf, fair in _TOP:
        if module == fair:
            return f"{hf}.{leaf}"
    return None


def fair_esm_args(config: dict, where: str) -> dict:
    """fair-esm ``ESM2(...)`` arguments for an HF ESM config; ConfigError where fair-esm's ESM2
    cannot express the model."""
    from protlm.errors import ConfigError, InputError

    if not isinstance(config, dict):
        raise InputError(f"{where}: config.json holds {type(config).__name__}, not an object (a damaged or edited "
                         f"model folder)")
    model_type = config.get("model_type")
    if model_type != "esm":
        raise ConfigError(f"{where}: a {model_type} model; --format fair-esm exports ESM models only "
                          f"(model_type esm)")
    shape = {}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{where}: config.json {key} is {value!r}, not a positive whole number (a damaged or "
                             f"edited model folder)")
        shape[key] = value
    hidden = shape["hidden_size"]
    problems = []
    if hidden % shape["num_attention_heads"]:
        problems.append(f"hidden_size {hidden} is not a multiple of num_attention_heads "
                        f"{shape['num_attention_heads']}")
    theta = config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if float(theta) != 10000.0:
        problems.append(f"rope_theta {theta} (ESM2: 10000)")
    if config.get("position_embedding_type", "absolute") != "rotary":
        problems.append(f"position_embedding_type {config.get('position_embedding_type', 'absolute')} (ESM2: rotary)")
    if config.get("emb_layer_norm_before"):
        problems.append("emb_layer_norm_before true (ESM2: none)")
    if int(config.get("intermediate_size", 4 * hidden)) != 4 * hidden:
        problems.append(f"intermediate_size {config['intermediate_size']} (ESM2: 4 × hidden_size = {4 * hidden})")
    if int(config.get("vocab_size", 33)) != 33:
        problems.append(f"vocab_size {config['vocab_size']} (ESM2: the 33-token ESM-1b alphabet)")
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {config['hidden_act']} (ESM2: gelu)")
    if abs(float(config.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_eps {config['layer_norm_eps']} (ESM2: 1e-5)")
    if problems:
        raise ConfigError(f"{where}: fair-esm's ESM2 cannot hold this model: " + "; ".join(problems))
    return {"num_layers": int(config["num_hidden_layers"]), "embed_dim": hidden,
            "attention_heads": int(config["num_attention_heads"]), "alphabet": "ESM-1b",
            "token_dropout": bool(config.get("token_dropout", False))}


def _fair_shape(key: str, hidden: int, heads: int, layers: int) -> tuple | None:
    """The shape fair-esm's ``ESM2(num_layers, embed_dim, attention_heads)`` gives ``key`` (None: not checked)."""
    vocab = 33
    top = {"embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "lm_head.bias": (vocab,),
           "lm_head.dense.weight": (hidden, hidden), "contact_head.regression.weight": (1, layers * heads),
           "contact_head.regression.bias": (1,)}
    if key in top:
        return top[key]
    if key.endswith(("layer_norm.weight", "layer_norm.bias", "layer_norm_after.weight", "layer_norm_after.bias",
                     "lm_head.dense.bias")):
        return (hidden,)
    m = re.match(r"^layers\.\d+\.(.+)$", key)
    if not m:
        return None
    sub = m.group(1)
    if sub.endswith("_proj.weight"):
        return (hidden, hidden)
    if sub.endswith("_proj.bias"):
        return (hidden,)
    return {"fc1.weight": (4 * hidden, hidden), "fc1.bias": (4 * hidden,), "fc2.weight": (hidden, 4 * hidden),
            "fc2.bias": (hidden,), "self_attn.rot_emb.inv_freq": ((hidden // heads + 1) // 2,)}.get(sub)


def fair_esm_state_dict(folder: Path) -> tuple[dict, dict]:
    """(fair-esm state dict, ESM2 args) of an HF ESM checkpoint folder (safetensors only)."""
    from safetensors import safe_open

    from protlm.errors import InputError, ProtlmError
    from protlm.models.hf import check_safetensors
    from protlm.models.folder import canonical_key

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder}: not a model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{config_path}: not valid JSON ({exc.msg})") from None
    try:
        args = fair_esm_args(config, str(folder))
    except (TypeError, ValueError) as exc:  # e.g. "layer_norm_eps": "x" in an edited config.json
        raise InputError(f"{config_path}: a value is not a number ({exc})") from None
    check_safetensors(str(folder), "CHECKPOINT")
    hf = {}
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt") as fh:
                for key in fh.keys():
                    tensor = fh.get_tensor(key)
                    for name in canonical_key(key, config):  # older protlm folders: gamma/beta, wildcard
                        hf[name] = tensor.clone()
        except ProtlmError:
            raise
        except Exception as exc:  # truncated or damaged file: safetensors' SafetensorError, OSError
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise InputError(f"{weights}: not a readable safetensors file ({type(exc).__name__}: {first})") from None
    if hf and not any(k.startswith("esm.") for k in hf) and any(k.startswith("encoder.layer.") for k in hf):
        # EsmModel.save_pretrained (a full/top fine-tune's lm/, a finetune-merge output) writes the
        # encoder alone: no `esm.` prefix and no LM head, which fair-esm's ESM2 state dict requires
        raise InputError(f"{folder}: holds an ESM encoder alone (saved without its masked-LM head, as a fine-tuned "
                         f"or merged LM is); fair-esm's ESM2 needs a whole EsmForMaskedLM checkpoint — use this "
                         f"folder with transformers or protlm --model, or export the base model")
    layers = args["num_layers"]
    out, foreign = {}, []
    for key, tensor in hf.items():
        fair = fair_esm_key(key)
        layer = _LAYER_KEY.match(key)
        if layer and (fair is None or int(layer.group(1)) >= layers):  # a layer the config does not have
            foreign.append(key)
        elif fair is not None:
            out[fair] = tensor
    if foreign:
        raise InputError(f"{folder}: the weights hold {len(foreign)} encoder-layer tensors that do not fit its "
                         f"{layers}-layer config.json ({', '.join(sorted(foreign)[:3])}"
                         f"{' …' if len(foreign) > 3 else ''}); the weights were saved for another shape or are damaged")
    if "lm_head.weight" not in out and "embed_tokens.weight" in out:  # tied to the embeddings
        out["lm_head.weight"] = out["embed_tokens.weight"].clone()
    need = {"embed_tokens.weight", "emb_layer_norm_after.weight"} | {
        f"layers.{i}.{fair}.weight" for i in range(layers) for _, fair in _LAYER if fair != "self_attn.rot_emb"}
    missing = sorted(need - set(out))
    if missing:
        raise InputError(f"{folder}: the weights lack {missing[0]} (and {len(missing) - 1} more) for fair-esm's ESM2")
    hidden, heads = args["embed_dim"], args["attention_heads"]
    import torch

    for key, tensor in out.items():  # the weights must be the shape config.json (and so ESM2(**args)) says
        want = _fair_shape(key, hidden, heads, layers)
        if want is not None and tuple(tensor.shape) != want:
            raise InputError(f"{folder}: {key} has shape {tuple(tensor.shape)}, but its config.json (hidden_size "
                             f"{hidden}, {heads} heads, {layers} layers) needs {want}; config.json and the weights "
                             f"do not match (an edited or damaged model folder)")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{folder}: {key} holds NaN or infinite values; not exported")

    for i in range(layers):  # rotary buffers are not learned; older/other writers may omit them
        key = f"layers.{i}.self_attn.rot_emb.inv_freq"
        if key not in out:
            dim = hidden // heads
            out[key] = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    if "contact_head.regression.weight" not in out:
        out["contact_head.regression.weight"] = torch.zeros(1, layers * heads)
        out["contact_head.regression.bias"] = torch.zeros(1)
    return {k: v.contiguous() for k, v in out.items()}, args


def export_fair_esm(folder: Path, out: Path, *, overwrite: bool = False) -> dict:
    from safetensors.torch import save_file

    from protlm.errors import InputError
    from protlm.io.atomic import write_json, write_with_path
    from protlm.io.outputs import check_apart, check_output_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: name the file *.safetensors (its arguments go to {out.stem}.json next to it)")
    sidecar = out.with_suffix(".json")
    for path, option in ((out, "--out"), (sidecar, "--out (arguments file)")):
        check_apart(path, [folder], option, what="the checkpoint folder ")
    check_output_file(out, overwrite=overwrite, inputs=[folder], option="--out", create_parent=True)
    check_output_file(sidecar, overwrite=overwrite, inputs=[folder], option="--out (arguments file)",
                      create_parent=True)
    state, args = fair_esm_state_dict(folder)
    meta = {"format": "fair-esm ESM2 state dict", "args": args, "source": str(folder),
            "load": "esm.model.esm2.ESM2(**args).load_state_dict(safetensors.torch.load_file(FILE))"}
    write_with_path(out, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "fair_esm_args": json.dumps(args)}))
    write_json(sidecar, meta)
    return {"out": str(out), "args_file": str(sidecar), "args": args, "tensors": len(state),
            "parameters": int(sum(v.numel() for k, v in state.items() if not k.endswith("inv_freq")))}


def cmd_export(args) -> int:
    from protlm.cli.common import emit

    result = export_fair_esm(Path(args.checkpoint), Path(args.out), overwrite=args.overwrite)
    a = result["args"]
    emit(args, result, f"fair-esm ESM2 ({a['num_layers']} layers, width {a['embed_dim']}, {a['attention_heads']} heads, "
                       f"{result['parameters']:,} parameters) → {result['out']} + {result['args_file']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", parents=[json_parent(), overwrite_parent()],
        help="write an ESM checkpoint as a fair-esm ESM2 state dict (safetensors + JSON arguments)",
        description="Write a checkpoint's weights in another project's layout. --format fair-esm: an ESM "
                    "checkpoint as fair-esm's ESM2 state dict (safetensors, fair-esm key names) and FILE.json "
                    "with ESM2's constructor arguments; docs/interop.md shows how to load it.")
    p.add_argument("checkpoint", help="checkpoint folder (config.json, model.safetensors)")
    p.add_argument("--format", required=True, choices=("fair-esm",), help="target layout")
    add_out(p, required=True, help="FILE.safetensors to write (FILE.json next to it)")
    p.set_defaults(func=cmd_export)
