"""sitecustomize bootstrap in a real child interpreter."""

import os
import subprocess
import sys

from conftest import PROVIDER


def run(code, native_dir, tmp_path, extra_path=(), env_extra=None, provider_dir=None):
    pdir = tmp_path / "pdir"
    if not pdir.exists():
        pdir.mkdir()
        # an installed provider directory: .so + packages (symlinked here)
        os.symlink(os.path.join(native_dir, "_msm_probe.abi3.so"), pdir / "_msm_probe.abi3.so")
        os.symlink(os.path.join(PROVIDER, "msm_provider"), pdir / "msm_provider")
        os.symlink(os.path.join(PROVIDER, "boot"), pdir / "boot")
    pdir = str(provider_dir or pdir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pdir + "/boot", pdir] + list(extra_path))
    env["MS_SERVICE_METRIC_CONTROL"] = str(tmp_path / "none" / "control.json")
    env["MS_SERVICE_METRIC_PROVIDER"] = pdir
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


CHECK = ("import sys, threading, msm_provider; "
         "print(msm_provider.get_provider() is not None, "
         "[t.name for t in threading.enumerate() if t.name == 'msm-provider'], "
         "getattr(sys.modules.get('sitecustomize'), 'USER', None))")


def test_boot_starts_provider_and_chains(native_dir, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("USER = 'ran'\n")
    r = run(CHECK, native_dir, tmp_path, extra_path=[str(user)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True ['msm-provider'] ran"
    assert r.stderr == ""


def test_boot_without_native_never_breaks_program(native_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    os.symlink(os.path.join(PROVIDER, "msm_provider"), broken / "msm_provider")
    os.symlink(os.path.join(PROVIDER, "boot"), broken / "boot")
    r = run("print('alive')", native_dir, tmp_path, provider_dir=broken)
    assert r.returncode == 0 and r.stdout.strip() == "alive"
    assert len(r.stderr.strip().splitlines()) == 1 and "not started" in r.stderr


def test_boot_multiprocessing_children(native_dir, tmp_path):
    code = (
        "import multiprocessing as mp, threading\n"
        "def child(q):\n"
        "    import msm_provider, threading, os\n"
        "    q.put((os.getpid(), msm_provider.get_provider() is not None,"
        " any(t.name == 'msm-provider' for t in threading.enumerate())))\n"
        "if __name__ == '__main__':\n"
        "    for method in ('spawn', 'fork'):\n"
        "        ctx = mp.get_context(method); q = ctx.Queue()\n"
        "        p = ctx.Process(target=child, args=(q,)); p.start(); r = q.get(timeout=30); p.join()\n"
        "        print(method, r[1], r[2])\n")
    script = tmp_path / "mpscript.py"
    script.write_text(code)
    r = run("import runpy; runpy.run_path(%r, run_name='__main__')" % str(script), native_dir, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["spawn True True", "fork True True"]
