"""An embedder spec: which embedder (a name) and how to run it (:class:`EmbedOptions`).

Everywhere protlm takes an embedder — ``protlm embed --model``, ``embedder:`` in task and
contact configs, ``protlm project``, the demo — it takes a spec, so device, precision, layer,
token budget and int8 reach every caller. In YAML a spec is either the bare name::

    embedder: checkpoints/protlm-swissprot-masked-xs

or a mapping of the name and any option::

    embedder: {name: unirep1900, layer: 0, tokens_per_batch: 20000}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from protlm.configfile import build
from protlm.errors import ConfigError

#: auto: the fastest accurate precision of the device (bf16 where it has fast bf16, else fp32;
#: protlm.embed.precision). Backends resolve it, and record the precision that ran.
DTYPES = ("fp32", "bf16", "fp16", "auto")


@dataclass
class EmbedOptions:
    layer: int = -1  # index into the hidden states: -1 last layer, 0 the embedding layer output
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "fp32"  # fp32 | bf16 (GPUs, CPUs with avx512_bf16/amx_bf16) | fp16 (GPUs) | auto
    int8: bool = False  # dynamic int8 quantisation of the linear layers (CPU)
    compile: bool = False  # fuse the packed CPU forward's per-token work with torch.compile (ESM family)
    tokens_per_batch: int | None = None  # tokens per batch, padding included (packed: none); None: the backend's
    max_sequences: int | None = None  # proteins per batch; None: the backend's default
    alone_above: int | None = None  # residues; longer proteins run alone. None: the backend's (1,000 for LMs)
    long_policy: str = "window"  # window | error, for models with a hard position limit
    window_overlap: int = 128  # residues shared by neighbouring windows
    cpu_fallback: bool = True  # a protein that does not fit the GPU is embedded on the CPU
    equal_length_batches: bool | None = None  # only equal lengths share a batch; None: the backend's choice
    pooling: str = "mean"  # per-protein vector: "mean" over residues, or a backend's own (e.g. unirep h_avg)
    seed: int = 0  # torch seed of the random weights of a ``random-init:FOLDER`` embedder (used by nothing else)

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"must be one of {sorted(DTYPES)}, not {self.dtype!r}", option="dtype")
        if self.long_policy not in ("window", "error"):
            raise ConfigError(f"must be window or error, not {self.long_policy!r}", option="long_policy")
        for name in ("tokens_per_batch", "max_sequences", "alone_above"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"must be positive, not {value!r}", option=name)
        if self.window_overlap < 0:
            raise ConfigError(f"must be >= 0, not {self.window_overlap!r}", option="window_overlap")

    def lm_options_set(self) -> list[str]:
        """Options that only mean something for a model with layers and a precision, if set."""
        out = []
        if self.layer != -1:
            out.append("--layer")
        if self.dtype not in ("fp32", "auto"):  # auto: fp32 for an embedder without a precision
            out.append("--dtype")
        if self.int8:
            out.append("--int8")
        if self.compile:
            out.append("--compile")
        return out


OPTION_NAMES = tuple(f.name for f in fields(EmbedOptions))


@dataclass
class EmbedderSpec:
    """A name (what ``--model`` takes) and the options to run it with."""

    name: str
    options: EmbedOptions = field(default_factory=EmbedOptions)

    def __str__(self) -> str:
        return self.name

    def with_options(self, **changes: Any) -> "EmbedderSpec":
        return EmbedderSpec(self.name, replace(self.options, **changes))


def parse_spec(value: Any, where: str = "embedder", defaults: EmbedOptions | None = None) -> EmbedderSpec:
    """A spec from a string, a ``{name: …, option: …}`` mapping, or an EmbedderSpec."""
    if isinstance(value, EmbedderSpec):
        return value
    options = replace(defaults) if defaults is not None else EmbedOptions()
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"config {where}: empty embedder name")
        spec = EmbedderSpec(value, options)
    elif isinstance(value, dict):
        if "name" not in value or not isinstance(value["name"], str) or not value["name"].strip():
            raise ConfigError(f"config {where}.name: give the embedder's name (an LM folder or hub id, onehot, …)")
        extra = {k: v for k, v in value.items() if k != "name"}
        unknown = sorted(set(extra) - set(OPTION_NAMES))
        if unknown:
            raise ConfigError(f"config {where}.{unknown[0]}: unknown embedder option; expected name or one of "
                              f"{list(OPTION_NAMES)}")
        given = build(EmbedOptions, extra, where)
        options = replace(options, **{k: getattr(given, k) for k in extra})
        spec = EmbedderSpec(value["name"], options)
    else:
        raise ConfigError(f"config {where}: must be an embedder name or a mapping with name and options, "
                          f"not {value!r}")
    try:
        spec.options.validate()
    except ConfigError as exc:
        raise exc.at(where) from None  # a file's setting is named by its field (embedder.dtype)
    return spec
