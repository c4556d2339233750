"""Test-session setup shared by tests/ and by `pytest --nbval-lax notebooks/`.

Everything a library would write under the home folder goes to build/test-home instead, every hub is offline,
and a network guard (tests/netguard) fails any test whose code — or whose notebook kernel — reaches past loopback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
# Under pytest-xdist (`pytest -n 2`) each worker gets its own home, caches and network-guard log: nothing writable is
# shared between workers, so no test sees another's half-built tiny model or network attempt.
HOME = Path(os.environ.get("COURSE_TEST_HOME", ROOT / "build" / "test-home")) / os.environ.get("PYTEST_XDIST_WORKER", "")
GUARD_DIR = ROOT / "tests" / "netguard"

_ENV = {
    "HF_HOME": HOME / "hf",
    "MPLCONFIGDIR": HOME / "matplotlib",
    "YOLO_CONFIG_DIR": HOME / "yolo",
    "XDG_CACHE_HOME": HOME / "cache",
    "XDG_CONFIG_HOME": HOME / "config",
    "XDG_DATA_HOME": HOME / "data",
    "JUPYTER_CONFIG_DIR": HOME / "jupyter" / "config",
    "JUPYTER_DATA_DIR": HOME / "jupyter" / "data",
    "JUPYTER_RUNTIME_DIR": HOME / "jupyter" / "runtime",
    "IPYTHONDIR": HOME / "ipython",
    "TORCH_HOME": HOME / "torch",
    "COURSE_TRACKING": HOME / "tensorboard",
}
for key, path in _ENV.items():
    path.mkdir(parents=True, exist_ok=True)
    os.environ[key] = str(path)
os.environ.update({
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "DO_NOT_TRACK": "1", "MPLBACKEND": "Agg",
    "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "COURSE_NETGUARD": "1", "COURSE_NETGUARD_LOG": str(HOME / "netguard.log"),
})
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(GUARD_DIR))
import sitecustomize as _netguard  # noqa: E402  (tests/netguard/sitecustomize.py)

_netguard.install()


@pytest.fixture(autouse=True)
def _no_network_attempts():
    """Fail the test that tried to reach the network (in this process or in a notebook kernel), naming the host."""
    log = Path(os.environ["COURSE_NETGUARD_LOG"])
    before = log.read_text().splitlines() if log.exists() else []
    yield
    after = log.read_text().splitlines() if log.exists() else []
    new = after[len(before):]
    if new:
        hosts = sorted({line.split(" ")[0] for line in new})
        pytest.fail(f"network access attempted (the course must run offline): {', '.join(hosts)}")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A fresh course cache for one test module, so the first tiny-model call really builds (and is timed as such)."""
    old = os.environ.get("COURSE_CACHE")
    os.environ["COURSE_CACHE"] = str(tmp_path_factory.mktemp("course-cache"))
    yield
    if old is None:
        os.environ.pop("COURSE_CACHE", None)
    else:
        os.environ["COURSE_CACHE"] = old


@pytest.fixture
def run_recipe(tmp_path):
    """Run ``recipes/<name>`` as a learner would in their own project: a fresh process, another folder, and
    ``course_utils`` not importable. Returns the CompletedProcess; fails the test with the recipe's output if it exits
    non-zero."""
    import subprocess

    def run(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        script = ROOT / "recipes" / name
        launcher = ("import runpy, sys; sys.modules['course_utils'] = None; sys.argv = sys.argv[1:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")
        proc = subprocess.run([sys.executable, "-c", launcher, str(script), *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(f"recipes/{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return run
