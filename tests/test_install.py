"""Every install path gives the compiled backends, or says why (issue 15).

The slow cases install a clean-clone-like copy of this repository (``git ls-files``) into fresh
virtual environments, the four ways a user would (``pip install <clone>`` and ``pip install -e
<clone>``, both with build isolation, so without torch at build time; the wheel of ``python -m
build --wheel``; the sdist of ``python -m build --sdist``), and check in each that ``import
rnnkernels`` stays light and that ``available_backends("cpu") == ["cpu", "reference"]`` with
results equal to torch.nn's: the extension is then built on first use, once for all cases (one
shared cache folder), while two processes load it at the same time. The venvs see this
interpreter's torch (and the rest of its site-packages but rnnkernels and triton) through a folder
of links named by a ``.pth`` file, so nothing multi-GB is installed; pip fetches setuptools for
the isolated builds from the registry.

The fast cases run a copy of the package (no extension, no sources) in a subprocess: a prebuilt
extension recorded for another torch is never imported, ``RNNKERNELS_NO_JIT=1`` and missing
sources or compiler make the compiled backends unavailable with a reason that says what to do, and
``backend="cpu"`` raises it while ``"auto"`` routes to the reference, saying so once.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from rnnkernels._version import __version__ as VERSION
from rnnkernels.backends import build_spec, config, jit_build

ROOT = Path(__file__).resolve().parents[1]
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def clean_env(**extra: str) -> dict:
    """This process's environment without what would steer the child (the test session's
    Triton interpreter flag, rnnkernels settings, a venv or import path), plus ``extra``."""
    drop = ("TRITON_INTERPRET", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith("RNNKERNELS_")}
    env.update(extra)
    return env


def run(cmd: list, *, env: dict | None = None, cwd: Path | None = None, timeout: int = 900):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


# A user's first session: import (light), then ask for the compiled backend and use it.
CHECK = """
import json, sys, time
import torch
t0 = time.perf_counter()
import rnnkernels
light = not any(m in sys.modules for m in ("torch._dynamo", "triton", "rnnkernels._C"))
from rnnkernels.backends import compiled
backends = rnnkernels.available_backends("cpu")
x = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(0))
ours, ref = rnnkernels.LSTM(5, 6, num_layers=2, backend="cpu"), torch.nn.LSTM(5, 6, num_layers=2)
ref.load_state_dict(ours.state_dict())
diff = float((ours(x)[0] - ref(x)[0]).abs().max())
print(json.dumps({"file": rnnkernels.__file__, "version": rnnkernels.__version__, "light": light,
                  "backends": backends, "diff": diff, "info": compiled.build_info()}))
"""


# ------------------------------------------------------------------------ fast unit cases
def test_mismatch_rule():
    here = {"torch": torch.__version__, "cuda": torch.version.cuda}
    assert jit_build.mismatch(here, "x.so") is None
    assert jit_build.mismatch(dict(here, cuda=None), "x.so") is None   # CPU-only build: fine
    other = jit_build.mismatch(dict(here, torch="1.0.0"), "x.so")
    assert "built for torch 1.0.0" in other and torch.__version__ in other
    assert "no build record" in jit_build.mismatch(None, "x.so")
    assert "CUDA 9.9" in jit_build.mismatch(dict(here, cuda="9.9"), "x.so")


def test_sources_are_globbed(tmp_path):
    """A new .cpp in python/ or csrc/cpu/ is compiled without a list to edit; the CUDA bridge
    and kernels only into a CUDA build; headers are shipped, never compiled."""
    for rel in ("python/new_ops.cpp", "python/cuda_ops.cpp", "python/glue.h", "csrc/cpu/k.cpp",
                "csrc/cpu/k.h", "csrc/cuda/k.cu", "csrc/include/rnnkernels/m.h",
                "csrc/tests/t.cpp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("// " + rel)
    assert build_spec.sources(str(tmp_path), False) == ["csrc/cpu/k.cpp", "python/new_ops.cpp"]
    assert build_spec.sources(str(tmp_path), True) == [
        "csrc/cpu/k.cpp", "csrc/cuda/k.cu", "python/cuda_ops.cpp", "python/new_ops.cpp"]
    assert "csrc/include/rnnkernels/m.h" in build_spec.shipped_files(str(tmp_path))
    assert not any("tests" in p for p in build_spec.shipped_files(str(tmp_path)))


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("RNNKERNELS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.cache_dir() == str(tmp_path / "xdg" / "rnnkernels")
    monkeypatch.setenv("RNNKERNELS_CACHE_DIR", str(tmp_path / "mine"))
    assert config.cache_dir() == str(tmp_path / "mine")


def bare_package(dest: Path, sources: bool = False) -> Path:
    """A copy of the package's Python files (no extension, no build record), and with
    ``sources`` the C++ sources in ``_sources/`` as an installed wheel has them."""
    shutil.copytree(ROOT / "rnnkernels", dest / "rnnkernels",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_build_info.json",
                                                  "_sources"))
    if sources:
        for rel in build_spec.shipped_files(str(ROOT)):
            target = dest / "rnnkernels" / build_spec.SOURCES_FOLDER / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, target)
    return dest


PROBE = """
import json, sys, warnings
import torch, rnnkernels
from rnnkernels.backends import compiled
assert rnnkernels.__file__.startswith(sys.argv[1]), rnnkernels.__file__
out = {"available": compiled.AVAILABLE, "error": compiled.ERROR,
       "imported": "rnnkernels._C" in sys.modules, "backends": rnnkernels.available_backends("cpu"),
       "info": compiled.build_info()}
x = torch.randn(4, 2, 3)
try:
    rnnkernels.GRU(3, 5, backend="cpu")(x)
except RuntimeError as exc:
    out["cpu_raises"] = str(exc)
ours, ref = rnnkernels.GRU(3, 5), torch.nn.GRU(3, 5)
ref.load_state_dict(ours.state_dict())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        out["auto_diff"] = float((ours(x)[0] - ref(x)[0]).abs().max())
out["warnings"] = [str(w.message) for w in caught if "rnnkernels" in str(w.message)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def user_python(tmp_path_factory) -> Path:
    """The python of a new venv that sees this interpreter's packages but rnnkernels (an
    editable install's finder would resolve ``rnnkernels.*`` to this checkout) and triton (not a
    dependency): through a folder of links named by a ``.pth`` file."""
    base = tmp_path_factory.mktemp("user")
    shared = base / "shared-site"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if not (name.startswith(("rnnkernels", "__editable__", "triton")) or name.endswith(".pth")):
            (shared / entry.name).symlink_to(entry)
    return new_venv(base / "venv", shared)


def new_venv(venv: Path, shared: Path) -> Path:
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.stdout.strip()) / "_shared_site.pth").write_text(f"{shared}\n")
    return py


def probe(pkg: Path, tmp_path: Path, py: Path, **env: str) -> tuple[dict, str]:
    res = run([py, "-c", PROBE, str(pkg)], cwd=pkg, timeout=300,
              env=clean_env(PYTHONPATH=str(pkg), RNNKERNELS_CACHE_DIR=str(tmp_path / "cache"),
                            **env))
    return json.loads(res.stdout.splitlines()[-1]), res.stderr


def assert_unavailable(out: dict, *needles: str) -> None:
    """The compiled backends are out, with the reason everywhere a user meets it."""
    assert not out["available"] and out["info"] is None and not out["imported"]
    assert "cpu" not in out["backends"] and "reference" in out["backends"]
    for text in (out["error"], out["cpu_raises"]):
        assert all(n in text for n in needles), (needles, text)
    assert out["auto_diff"] < 1e-5, "auto must route to a backend that computes GRU correctly"
    assert len(out["warnings"]) == 1 and "'cpu' skipped" in out["warnings"][0], out["warnings"]


def test_prebuilt_for_another_torch_is_not_imported(tmp_path, user_python):
    """A ``_C`` recorded for torch 1.0.0 is never imported (the file here is not even a shared
    object: importing it would fail with another error); the reason names both versions."""
    pkg = bare_package(tmp_path / "site")
    (pkg / "rnnkernels" / f"_C{EXT_SUFFIX}").write_bytes(b"not an ELF file")
    build_spec.write_info(str(pkg / "rnnkernels"), {"torch": "1.0.0", "cuda": None})
    out, _ = probe(pkg, tmp_path, user_python, RNNKERNELS_NO_JIT="1")
    assert_unavailable(out, "was built for torch 1.0.0", torch.__version__, "RNNKERNELS_NO_JIT")


def test_no_jit_setting(tmp_path, user_python):
    out, err = probe(bare_package(tmp_path / "site", sources=True), tmp_path, user_python,
                     RNNKERNELS_NO_JIT="1")
    assert_unavailable(out, "no prebuilt rnnkernels._C", "RNNKERNELS_NO_JIT is set",
                       "--no-build-isolation")
    assert "building" not in err and not (tmp_path / "cache").exists()


def test_missing_sources_and_missing_compiler(tmp_path, user_python):
    out, _ = probe(bare_package(tmp_path / "a"), tmp_path, user_python)
    assert_unavailable(out, "C++ sources of rnnkernels._C are not in this installation")
    out, err = probe(bare_package(tmp_path / "b", sources=True), tmp_path, user_python,
                     CXX=str(tmp_path / "no-such-c++"))
    assert_unavailable(out, "no C++ compiler", "no-such-c++")
    assert "building" not in err


def test_a_failed_build_is_reported_not_retried(tmp_path, user_python, monkeypatch):
    """A first-use build of these sources for this torch that failed once (its log is in the
    cache folder) is reported from the log in later processes, not compiled again each time."""
    monkeypatch.setenv("RNNKERNELS_CACHE_DIR", str(tmp_path / "cache"))
    for with_cuda in (False, True) if torch.version.cuda else (False,):
        folder = Path(jit_build._folder(str(ROOT), with_cuda))   # the keys the child computes
        folder.mkdir(parents=True)
        (folder / jit_build.ERROR_LOG).write_text("RuntimeError: Error building extension: boom\n")
    out, err = probe(bare_package(tmp_path / "site", sources=True), tmp_path, user_python)
    assert_unavailable(out, "an earlier first-use build failed", "boom", "delete")
    assert "building" not in err


# ------------------------------------------------------------------- slow: the four paths
@pytest.fixture(scope="module")
def world(tmp_path_factory, user_python):
    """A clean-clone-like copy of the repository, its sdist and wheel, and the JIT cache that
    every installation shares."""
    base = tmp_path_factory.mktemp("install")
    clone = base / "clone"
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                 cwd=ROOT).stdout.split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", base / "dist", clone],
        env=clean_env())
    shared = user_python.parents[2] / "shared-site"    # the user_python fixture's
    return {"base": base, "clone": clone, "dist": base / "dist", "shared": shared,
            "cache": base / "jit-cache"}


def test_sdist_and_wheel_contents(world):
    (sdist,) = world["dist"].glob("rnnkernels-*.tar.gz")
    (wheel,) = world["dist"].glob("rnnkernels-*.whl")
    assert wheel.name == f"rnnkernels-{VERSION}-py3-none-any.whl", wheel.name
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    need = build_spec.shipped_files(str(world["clone"]))
    assert any(p.endswith(".cu") for p in need) and any(p.endswith(".h") for p in need)
    assert set(need) <= in_sdist, set(need) - in_sdist
    assert {"LICENSE", "CHANGELOG.md", "setup.py", "pyproject.toml"} <= in_sdist
    assert {f"rnnkernels/_sources/{p}" for p in need} <= in_wheel
    assert "rnnkernels/py.typed" in in_wheel
    assert "rnnkernels/plans/cpu.json" in in_wheel     # the measured plan of `auto` (package data)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in in_wheel), in_wheel
    for names in (in_sdist, in_wheel):
        assert not [n for n in names if n.endswith((".so", ".o", "_build_info.json"))]


PATHS = {
    "pip-install": lambda w: ["install", w["clone"]],
    "pip-install-editable": lambda w: ["install", "-e", w["clone"]],
    "wheel": lambda w: ["install", next(w["dist"].glob("*.whl"))],
    "sdist": lambda w: ["install", next(w["dist"].glob("*.tar.gz"))],
}


@pytest.mark.slow
@pytest.mark.parametrize("path", list(PATHS))
def test_install_path_gives_the_compiled_backends(world, path):
    py = new_venv(world["base"] / f"venv-{path}", world["shared"])
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    run([sys.executable, "-m", "pip", "--python", py, "-q", *PATHS[path](world)],
        env=clean_env(), cwd=world["base"])
    # Two processes at once: only one builds (if the cache is cold), both load the same build.
    env = clean_env(RNNKERNELS_CACHE_DIR=str(world["cache"]))
    procs = [subprocess.Popen([py, "-c", CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=world["base"]) for _ in range(2)]
    outs = [p.communicate(timeout=900) + (p.returncode,) for p in procs]
    for stdout, stderr, rc in outs:
        assert rc == 0, stderr
        got = json.loads(stdout.splitlines()[-1])
        assert got["backends"] == ["cpu", "reference"], (got, stderr)
        assert got["light"], "import rnnkernels loaded torch._dynamo, triton or the extension"
        assert got["version"] == VERSION and got["diff"] < 1e-5
        assert got["info"]["built_by"] == "jit" and got["info"]["torch"] == torch.__version__
        assert got["info"]["path"].startswith(str(world["cache"]))
        where = Path(got["file"]).parent
        assert where == (world["clone"] / "rnnkernels" if path == "pip-install-editable"
                         else site / "rnnkernels"), where
    assert sum("building the C++ extension for torch" in err for _, err, _ in outs) <= 1
    builds = [d for d in world["cache"].iterdir() if d.is_dir()]
    assert len(builds) == 1, builds    # every path shares one build
    assert not (builds[0] / "lock").exists()


@pytest.mark.slow
def test_mismatched_prebuilt_falls_back_to_the_first_use_build(world, user_python):
    """A clone whose ``_C`` was built for another torch: one line says so, the cached build
    for this torch is used instead (the clone's sources are the installed ones: same key)."""
    pkg = world["clone"] / "rnnkernels"
    (pkg / f"_C{EXT_SUFFIX}").write_bytes(b"not an ELF file")
    build_spec.write_info(str(pkg), {"torch": "1.0.0", "cuda": None})
    try:
        res = run([user_python, "-c", CHECK], cwd=world["clone"],
                  env=clean_env(PYTHONPATH=str(world["clone"]),
                                RNNKERNELS_CACHE_DIR=str(world["cache"])))
    finally:
        (pkg / f"_C{EXT_SUFFIX}").unlink()
        (pkg / build_spec.INFO_FILE).unlink()
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["backends"] == ["cpu", "reference"] and got["info"]["built_by"] == "jit"
    notes = [ln for ln in res.stderr.splitlines() if "built for torch 1.0.0" in ln]
    assert len(notes) == 1 and "using a build for this torch instead" in notes[0], res.stderr
