"""protlm as a user gets it: a wheel installed outside the repository (issue 24, item 23).

- The wheel carries the Apache-2.0 LICENSE its metadata names, and every committed checkpoint
  (``architectures-xs`` included) and recipe, as package data that resolves wherever pip puts it.
- Names follow one rule (:mod:`protlm.io.resources`): a path under the working directory wins, else
  a bundled checkpoint (``checkpoints/NAME`` or ``NAME``) or recipe folder, else a hub id, and a hub
  id that cannot be fetched (offline, unreachable, not cached) fails at once with one line.
- ``import protlm.models`` registers every model family protlm defines with transformers.

The ``slow`` tests build a wheel from a copy of this checkout (``pip wheel --no-deps
--no-build-isolation``: offline, a few seconds), ``pip install --target`` it into a temporary
folder and run it with ``PYTHONPATH`` set to that folder from another temporary working directory,
so neither the editable install nor the repository's own folders can stand in for it. About 25 s.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from protlm.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MASKED = "protlm-swissprot-masked-xs"
ARCHITECTURES = ("albert", "bert", "causal", "esm", "txl", "xlnet")
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once
#: The wheel was 3.9 MB before architectures-xs (7.9 MB of float32 weights) was added; 11.3 MB after;
#: 12.8 MB with txl-preln and the UniRep-64 predictors; 14.4 MB with the UniRep-1900 secondary-structure
#: predictor (1.6 MB of float32 weights; docs/predictors.md "Sizes"); 15.7 MB with the contact predictors
#: (UniRep-64 and -256: 0.16 + 0.53 MB) and the UniRep-1900 localization head (0.24 MB), 3.0 MB of heads in all.
MAX_WHEEL_BYTES = 16_500_000


# --------------------------------------------------------------------------- fast: the package list


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_list_names_every_package_under_src():
    """The package list is explicit (the bundled data is mapped from outside src/): a new
    subpackage must be added to it, or the wheel would leave it out."""
    tool = _pyproject()["tool"]["setuptools"]
    packages = set(tool["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src" / "protlm").rglob("__init__.py")}
    assert found - packages == set()
    # data-only folders (no __init__.py: protlm.serve.static) are listed so their package data ships
    data_only = {p for p in packages if not p.startswith("protlm._bundled") and p not in found}
    assert data_only <= set(tool["package-data"]), data_only
    assert all((ROOT / "src" / Path(*p.split("."))).is_dir() for p in data_only)
    assert {p for p in packages if not p.startswith("protlm._bundled")} - data_only == found


# --------------------------------------------------------------------------- fast: model families


def _registering_modules() -> dict[str, str]:
    """``{module: model_type}`` for each protlm.models module that registers a model type."""
    out = {}
    for path in sorted((ROOT / "src" / "protlm" / "models").glob("*.py")):
        text = path.read_text()
        if "AutoConfig.register(" not in text:
            continue
        tree = ast.parse(text)
        types = [node.value.value for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "model_type" for t in node.targets)
                 and isinstance(node.value, ast.Constant)]
        assert len(types) == 1, (path, types)
        out[f"protlm.models.{path.stem}"] = types[0]
    return out


def test_importing_models_registers_every_family():
    """One rule for every family: ``import protlm.models`` registers ProtTXL and UniRep alike
    (UniRep used to need ``import protlm.models.unirep`` of its own)."""
    families = _registering_modules()
    assert set(families.values()) >= {"prottxl", "unirep"}
    code = textwrap.dedent(f"""
        import sys
        import protlm.models
        from transformers import AutoConfig, AutoModel
        for model_type in {sorted(families.values())!r}:
            config = AutoConfig.for_model(model_type)
            assert type(AutoModel.from_config(config)).__module__.startswith("protlm.models."), model_type
        assert set(protlm.models.OWN_MODEL_TYPES) == set({sorted(families.values())!r})
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------- fast: the naming rule


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the repository."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("name", [MASKED, f"checkpoints/{MASKED}", "architectures-xs/esm",
                                  "checkpoints/architectures-xs/txl", "protlm-kmer3-swissprot"])
def test_bundled_checkpoint_names_resolve_from_any_directory(elsewhere, name):
    from protlm.io.resources import model_source

    folder = Path(model_source(name))
    assert folder.is_absolute() and (folder / "config.json").is_file()
    assert folder.name == Path(name).name


def test_recipes_and_default_suite_resolve_from_any_directory(elsewhere):
    import yaml

    from protlm.cli.main import build_parser
    from protlm.io.resources import model_source, resolve_path

    suite = Path(build_parser().parse_args(["benchmark"]).suite)
    assert suite.is_absolute() and len(list(suite.glob("*.yaml"))) >= 10
    assert Path(build_parser().parse_args(["contacts", "benchmark"]).suite) == suite
    assert resolve_path("configs/benchmarks") == suite
    for recipe in sorted(suite.glob("*.yaml")):
        embedder = str(yaml.safe_load(recipe.read_text())["embedder"]).removeprefix("random-init:")
        if embedder in ("onehot", "blosum62", "kmer"):
            continue
        assert (Path(model_source(embedder)) / "config.json").is_file(), (recipe.name, embedder)


def test_a_path_under_the_working_directory_wins(elsewhere):
    from protlm.io.resources import model_source, resolve_path

    (elsewhere / "checkpoints" / MASKED).mkdir(parents=True)
    (elsewhere / "configs" / "benchmarks").mkdir(parents=True)
    assert model_source(f"checkpoints/{MASKED}") == f"checkpoints/{MASKED}"
    assert resolve_path("configs/benchmarks") == Path("configs/benchmarks")
    # outside checkpoints/ and configs/ nothing is looked up in the bundle
    assert resolve_path("src/protlm") == Path("src/protlm")
    assert model_source("onehot") == "onehot"


@pytest.fixture
def hub_env(monkeypatch):
    """A clean hub setting restored afterwards: not offline, nothing cached."""
    import protlm.io.resources as resources

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(resources, "_cached", lambda model: False)
    return resources


def test_unreachable_hub_fails_at_once(elsewhere, hub_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    start = time.perf_counter()
    with pytest.raises(InputError, match="unreachable") as info:
        hub_env.model_source("nobody/no-such-protein-model")
    assert time.perf_counter() - start < 5
    assert "\n" not in str(info.value) and "protlm-swissprot-masked-xs" in str(info.value)


def test_offline_hub_fails_at_once(elsewhere, hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        hub_env.model_source("checkpoints/no-such-checkpoint")  # owner/name form: not bundled, so a hub id


def test_unreachable_hub_with_a_cached_model_goes_offline(elsewhere, hub_env, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(hub_env, "_cached", lambda model: True)
    assert hub_env.model_source("owner/cached-model") == "owner/cached-model"
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


# --------------------------------------------------------------------------- slow: the wheel, installed


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """(wheel, install folder, working directory): a wheel built from a copy of this checkout and
    installed with ``pip install --target``."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building the wheel needs setuptools >= 77 in this environment (no build isolation)")
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src_copy"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for name in ("src", "checkpoints", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--no-cache-dir"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
                            str(src)], capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("protlm-*.whl"))
    target = base / "site"
    install = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=180)
    assert install.returncode == 0, install.stderr[-3000:]
    cwd = base / "work"
    cwd.mkdir()
    (cwd / "x.fasta").write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
    return wheel, target, cwd


def _run(wheel_install, *args: str, code: str | None = None, env: dict | None = None, timeout: float = 120):
    """``protlm ARGS`` (or ``python -c CODE``) with only the installed wheel on PYTHONPATH."""
    _, target, cwd = wheel_install
    drop = ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    environ.update({"PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1", **(env or {})})
    argv = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "protlm.cli.main", *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


@pytest.mark.slow
def test_wheel_carries_license_checkpoints_and_recipes(wheel_install):
    wheel, _, _ = wheel_install
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        licenses = [n for n in names if n.startswith("protlm-") and "/licenses/" in n]
        assert licenses, "no LICENSE in the wheel"
        text = z.read(licenses[0]).decode()
        assert "Apache License" in text and "Version 2.0, January 2004" in text
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    bundle = "protlm/_bundled/checkpoints/"
    for arch in ARCHITECTURES:
        for file in ("config.json", "model.safetensors"):
            assert f"{bundle}architectures-xs/{arch}/{file}" in names
    for ckpt in (MASKED, "protlm-swissprot-causal-xs", "protlm-kmer3-swissprot"):
        assert f"{bundle}{ckpt}/model.safetensors" in names
    recipes = {p.name for p in (ROOT / "configs" / "benchmarks").glob("*.yaml")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("protlm/_bundled/configs/benchmarks/")} == recipes
    assert not any(".data/" in n or "__pycache__" in n for n in names)
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, wheel.stat().st_size


@pytest.mark.slow
def test_installed_wheel_resolves_bundled_names(wheel_install):
    """From another working directory: the installed package (not the checkout) resolves the
    recipes' names, the bare checkpoint names and the default --suite to its own data."""
    _, target, _ = wheel_install
    code = textwrap.dedent(f"""
        from pathlib import Path
        import yaml
        import protlm
        from protlm.cli.main import build_parser
        from protlm.io.resources import model_source
        target = Path({str(target)!r}).resolve()
        assert Path(protlm.__file__).resolve().is_relative_to(target), protlm.__file__
        suite = Path(build_parser().parse_args(["benchmark"]).suite).resolve()
        assert suite.is_relative_to(target) and len(list(suite.glob("*.yaml"))) >= 10, suite
        names = ["{MASKED}", "checkpoints/{MASKED}", "architectures-xs/esm"]
        names += [str(yaml.safe_load(p.read_text())["embedder"]).removeprefix("random-init:")
                  for p in suite.glob("*.yaml")]
        for name in names:
            if name in ("onehot", "blosum62", "kmer"):
                continue
            folder = Path(model_source(name)).resolve()
            assert folder.is_relative_to(target) and (folder / "config.json").is_file(), (name, folder)
        print("ok")
    """)
    proc, _ = _run(wheel_install, code=code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    proc, _ = _run(wheel_install, "benchmark", "--help")
    assert proc.returncode == 0 and "--suite" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("model", [MASKED, f"checkpoints/{MASKED}"])
def test_installed_wheel_embeds_with_the_bundled_checkpoint(wheel_install, model):
    _, _, cwd = wheel_install
    out = cwd / f"{model.replace('/', '_')}.h5"
    proc, _ = _run(wheel_install, "embed", "--model", model, "--input", "x.fasta", "--out", out.name,
                   env={"HF_ENDPOINT": UNREACHABLE})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"HF_ENDPOINT": UNREACHABLE}, {"HF_HUB_OFFLINE": "1"}], ids=["unreachable", "offline"])
def test_installed_wheel_unknown_model_fails_fast(wheel_install, env):
    proc, seconds = _run(wheel_install, "embed", "--model", "nobody/no-such-protein-model", "--input", "x.fasta",
                         "--out", "never.h5", env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("protlm: error: --model nobody/no-such-protein-model"), proc.stderr
    # fast: not a hub timeout with retries (tens of seconds); the bound leaves room for a loaded machine
    assert seconds < 20, seconds
