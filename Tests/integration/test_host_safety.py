"""A hostile process or container cannot turn the root agent against the host (issue 8).

Writes into a target's mount namespace: the target lives in its own mount namespace (a
private tmpfs on /tmp, where the test's runtime directory is); after `on`, something in
that namespace replaces what the agent wrote there (the runtime directory, the control
file, the staging name of the old code) by symlinks to host paths. `restart` and `off`
must create, change or chmod nothing on the host, and the agent must say why it skipped
the target.
"""

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import PYENV_PYTHON, free_port, fixtures_outside_tmp, release_services, start_service

PYTHON = PYENV_PYTHON


def snapshot(root):
    """Every entry under root (and root itself): type, mode, owner, size, mtime, content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) and not os.path.islink(path) else ""
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
    return out


def in_namespace(pid, script):
    subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", script], check=True, capture_output=True, text=True)


@pytest.fixture
def contained(agent, request):
    """A fixture service in its own mount namespace (private /tmp), started without exec."""
    started = []
    port = free_port()
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none /tmp && exec "$0" "$@"']
    cmd = prefix + [PYTHON, str(fixtures_outside_tmp()), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_SERVICE_METRIC") and k != "PYTHONPATH"}
    svc = start_service(cmd, env)
    started.append(svc)
    yield svc
    release_services(agent, request, started)


@pytest.fixture
def host_dir():
    """A host directory the container's symlinks point at, with a file that must not change."""
    path = tempfile.mkdtemp(prefix="msm-host-", dir="/var/tmp")
    os.chmod(path, 0o700)
    victim = Path(path, "victim")
    victim.write_text("host data\n")
    os.chmod(victim, 0o600)
    yield path
    subprocess.run(["rm", "-rf", path])


@pytest.mark.parametrize("attack", ["runtime-dir", "control-file", "staging-name"])
def test_symlinks_in_a_container_never_reach_the_host(agent, contained, runtime_dir, host_dir, attack):
    if not os.access(PYTHON, os.X_OK):
        pytest.fail("%s is needed for this test" % PYTHON)
    pid = contained.pid
    agent.on(pid)
    inside = "/proc/%d/root%s" % (pid, runtime_dir)
    assert Path(inside, "control.json").is_file(), "no control file placed in the target's namespace"
    daemon = agent.daemon_pid()
    victim = os.path.join(host_dir, "victim")
    if attack == "runtime-dir":
        in_namespace(pid, 'mv "%s" "%s.moved" && ln -s "%s" "%s"' % (runtime_dir, runtime_dir, host_dir, runtime_dir))
    elif attack == "control-file":
        in_namespace(pid, 'rm -f "%s/control.json" && ln -s "%s" "%s/control.json"' % (runtime_dir, victim, runtime_dir))
    else:  # the staging name the agent used to write through (control.json.tmp-<agent pid>)
        in_namespace(pid, 'ln -s "%s" "%s/control.json.tmp-%d"' % (victim, runtime_dir, daemon))
    before = snapshot(host_dir)

    restart = agent.restart()
    after_restart = snapshot(host_dir)
    assert after_restart == before, "restart changed the host directory: %r -> %r" % (before, after_restart)
    status = agent.status()
    if attack == "runtime-dir":
        text = restart.stdout + restart.stderr
        assert "pid %d: control file not written" % pid in text and "symlink" in text, text
        assert any("pid %d:" % pid in n and "symlink" in n for n in status["notes"]), status["notes"]
        assert "symlink" in agent.log(), agent.log()[-2000:]
    else:
        # The symlink is replaced (renameat), never followed: the copy is a regular file.
        assert restart.returncode == 0, restart.stdout + restart.stderr
        copy = os.lstat(os.path.join(inside, "control.json"))
        assert not os.path.islink(os.path.join(inside, "control.json")) and copy.st_uid == 0

    off = agent.off()
    assert off.returncode == 0, off.stdout + off.stderr
    assert snapshot(host_dir) == before, "off changed the host directory"
    assert Path(victim).read_text() == "host data\n"
    if attack != "runtime-dir":
        assert not os.path.exists(os.path.join(inside, "control.json")), "off left the control-file copy behind"
