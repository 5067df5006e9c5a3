"""Command-line contract: root check, dead pids, targets without provider, exec."""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import NOT_ROOT_MESSAGE, SYMBOLS, wait_for

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _nobody_can(test_flag, path):
    return subprocess.run(NOBODY + ["test", test_flag, str(path)]).returncode == 0


@pytest.fixture
def nobody_binary(msm_bin):
    """The binary at a path user nobody can execute (copied if needed)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    if _nobody_can("-x", msm_bin):
        yield msm_bin
        return
    tmp = tempfile.mkdtemp(prefix="msm-nobody-", dir="/tmp")
    os.chmod(tmp, 0o755)
    copy = os.path.join(tmp, os.path.basename(msm_bin))
    shutil.copy2(msm_bin, copy)
    os.chmod(copy, 0o755)
    yield copy
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("args", [
    ["on", "--pid", "1"], ["off"], ["restart"], ["status"], ["status", "--json"], ["run"],
], ids=lambda a: "-".join(a).replace("--", ""))
def test_not_root_is_refused(agent, nobody_binary, args):
    proc = subprocess.run(NOBODY + [nobody_binary] + args, env=agent.env(), capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.strip() == NOT_ROOT_MESSAGE, proc.stderr


def test_check_config_needs_no_root(agent, nobody_binary):
    tmp = tempfile.mkdtemp(prefix="msm-cfg-", dir="/tmp")  # pytest's tmp_path is 0700
    try:
        os.chmod(tmp, 0o755)
        cfg = os.path.join(tmp, "symbols.yaml")
        shutil.copy(SYMBOLS, cfg)
        os.chmod(cfg, 0o644)
        proc = subprocess.run(NOBODY + [nobody_binary, "check-config", cfg], env=agent.env(),
                              capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("%s: OK (" % cfg), proc.stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    pid = proc.pid
    assert not os.path.exists("/proc/%d" % pid)
    return pid


def test_dead_pid_is_an_error(agent):
    pid = _dead_pid()
    proc = agent.run("on", "--pid", pid, "--config", SYMBOLS, "--listen", agent.listen)
    assert proc.returncode == 1
    assert "ms-service-metric: no process with pid %d" % pid in proc.stderr, proc.stderr


def test_target_without_provider_gets_it_injected(agent, service_factory):
    plain = service_factory(under_exec=False)
    proc = agent.on(plain.pid)
    out = proc.stdout + proc.stderr
    assert "pid %d (main, dp -1): collecting (provider injected)" % plain.pid in out, out
    target = wait_for(lambda: agent.target(agent.status(), plain.pid), what="target listed")
    assert target["state"] == "attached" and target["provider"] == "injected", target
    assert plain.call("sync", n=2)["results"] == [1, 3]
    agent.wait_histogram_count("fixture:sync:duration", 2)


def test_non_python_pid_is_refused_with_a_message(agent):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        proc = agent.run("on", "--pid", sleeper.pid, "--listen", "127.0.0.1:%d" % agent.port)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "pid %d" % sleeper.pid in proc.stderr and "CPython" in proc.stderr, proc.stderr
        assert sleeper.poll() is None  # untouched, still running
    finally:
        sleeper.kill()


def test_exec_keeps_pid_and_sets_environment(agent, service):
    info = service.pid_info()
    assert info["pid"] == service.pid, "exec must execvp (same pid)"
    env = info["env"]
    assert env["MS_SERVICE_METRIC_CONTROL"] == os.path.join(agent.runtime_dir, "control.json")
    provider = env["MS_SERVICE_METRIC_PROVIDER"]
    assert provider.startswith(os.path.join(agent.runtime_dir, "provider") + "/")
    assert env["PYTHONPATH"].split(":")[:2] == [provider + "/boot", provider]
    # dormant provider: nothing measured, results as usual
    assert service.call("sync", n=2)["results"] == [1, 3]


def test_runtime_dir_permissions(agent, instrumented):
    sock = os.path.join(agent.runtime_dir, "agent.sock")
    assert os.path.exists(sock)
    st = os.stat(sock)
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o600, oct(st.st_mode)
    ctl = os.stat(os.path.join(agent.runtime_dir, "control.json"))
    assert ctl.st_uid == 0 and not (ctl.st_mode & 0o022), oct(ctl.st_mode)


def test_exec_as_another_user_once_the_provider_is_installed(agent, nobody_binary):
    probe = ["/usr/bin/python3", "-c", "import os; print(os.environ['MS_SERVICE_METRIC_PROVIDER'])"]
    before = subprocess.run(NOBODY + [nobody_binary, "exec", "--"] + probe, env=agent.env(),
                            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert before.returncode == 1, (before.stdout, before.stderr)
    assert "not installed" in before.stderr and "sudo ms-service-metric exec -- true" in before.stderr, before.stderr
    agent.must("exec", "--", "true")  # root installs it
    after = subprocess.run(NOBODY + [nobody_binary, "exec", "--"] + probe, env=agent.env(),
                           capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip().startswith(agent.runtime_dir + "/provider/"), after.stdout
