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


# --------------------------------------------------------------------------
# Any process can make itself a target (watch-all mode)
# --------------------------------------------------------------------------

HOSTILE = r"""
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
print("ready", flush=True)
time.sleep(600)
"""


def hostile_elf():
    """An ELF64 x86-64 header whose section table lies past 2**63 (an Int conversion that
    traps in a reader without checked arithmetic)."""
    import struct
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 2 ** 63 + 64, 0, 64, 56, 0, 64, 5, 0)
    return header + bytes(4096 - len(header))


@pytest.fixture
def hostile_files():
    """Files named like the provider library: a malformed ELF, a character device that
    reads zeros without end, and a well-formed ELF that is not our provider."""
    base = Path(tempfile.mkdtemp(prefix="msm-hostile-", dir="/var/tmp"))
    made = {}
    for kind in ("elf", "device", "other"):
        d = base / kind
        d.mkdir()
        path = d / "_msm_probe.abi3.so"
        if kind == "elf":
            path.write_bytes(hostile_elf())
        elif kind == "device":
            os.mknod(str(path), 0o644 | 0o020000, os.makedev(1, 5))  # like /dev/zero
        else:
            path.write_bytes(Path("/lib/x86_64-linux-gnu/libc.so.6").read_bytes())
        made[kind] = str(path)
    yield made
    subprocess.run(["rm", "-rf", str(base)])


def test_a_process_mapping_a_fake_provider_is_not_a_target(agent, service, hostile_files):
    procs = {}
    try:
        for kind, path in hostile_files.items():
            p = subprocess.Popen([PYTHON, "-c", HOSTILE, path], stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready", kind
            procs[kind] = p
        # Watch-all: every process that carries the provider, the genuine one (the fixture
        # service under `exec`) included.
        agent.must("on", "--config", str(Path(__file__).resolve().parents[1] / "fixtures" / "fixture_symbols.yaml"),
                   "--listen", agent.listen)

        def all_refused():
            lines = [line for line in agent.log().splitlines() if "not a target" in line]
            return all(any("pid=%d " % p.pid in line for line in lines) for p in procs.values())

        from conftest import wait_for
        wait_for(all_refused, 15, what="a 'not a target' line for each fake provider")
        status = agent.status()
        pids = {t["pid"] for t in status["targets"]}
        assert service.pid in pids, status
        for kind, p in procs.items():
            assert p.pid not in pids, (kind, status)
        log = agent.log()
        assert "is not a regular file" in log and "is not this agent's provider library" in log, log[-3000:]
        # The genuine target still collects.
        service.call("sync", n=2)
        agent.wait_histogram_count("fixture:sync:duration", 2)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


# --------------------------------------------------------------------------
# Discovery restricted to given uids or cgroups
# --------------------------------------------------------------------------

def _cgroup_root():
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(root + "/cgroup.controllers"):
            return Path(root)
    pytest.fail("no cgroup v2 hierarchy (cgroup.controllers) under /sys/fs/cgroup")


def test_watch_all_takes_only_the_given_cgroup_and_uid(agent, service_factory, msm_bin):
    root = _cgroup_root()
    group = root / ("msm-test-disco-%d" % os.getpid())
    group.mkdir(exist_ok=True)
    try:
        inside = service_factory()
        outside = service_factory()
        (group / "cgroup.procs").write_text(str(inside.pid))
        config = str(Path(__file__).resolve().parents[1] / "fixtures" / "fixture_symbols.yaml")
        agent.must("on", "--config", config, "--listen", agent.listen, "--only-cgroup", "/" + group.name)
        from conftest import wait_for
        wait_for(lambda: inside.pid in {t["pid"] for t in agent.status()["targets"]}, 15,
                 what="the service in the cgroup collected")
        # Scans keep running: the other one must still not be taken a few scans later.
        deadline = time_after(1.5)
        while not deadline():
            assert outside.pid not in {t["pid"] for t in agent.status()["targets"]}
        inside.call("sync", n=2)
        agent.wait_histogram_count("fixture:sync:duration", 2)
        assert agent.off().returncode == 0

        # --only-uid: root's processes are taken, none else's; then a uid no process has.
        agent.must("on", "--config", config, "--listen", agent.listen, "--only-uid", "0")
        wait_for(lambda: {inside.pid, outside.pid} <= {t["pid"] for t in agent.status()["targets"]}, 15,
                 what="both root services collected with --only-uid 0")
        assert agent.off().returncode == 0
        agent.must("on", "--config", config, "--listen", agent.listen, "--only-uid", "65534")
        deadline = time_after(1.5)
        while not deadline():
            assert not {inside.pid, outside.pid} & {t["pid"] for t in agent.status()["targets"]}
    finally:
        try:
            for pid in (group / "cgroup.procs").read_text().split():
                (root / "cgroup.procs").write_text(pid)
            group.rmdir()
        except OSError:
            pass


def time_after(seconds):
    import time
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


# --------------------------------------------------------------------------
# /proc unreadable is not "every target exited"
# --------------------------------------------------------------------------

def test_targets_survive_an_agent_out_of_file_descriptors(agent, service):
    agent.on(service.pid)
    service.call("sync", n=1)
    agent.wait_histogram_count("fixture:sync:duration", 1)
    daemon = agent.daemon_pid()
    soft = next(line.split()[3] for line in Path("/proc/%d/limits" % daemon).read_text().splitlines()
                if line.startswith("Max open files"))
    # No descriptor left for the agent (a new fd must be below the soft limit, and 0-2 are
    # taken): opendir("/proc") and every open fail with EMFILE.
    subprocess.run(["prlimit", "--pid", str(daemon), "--nofile=3:"], check=True)
    from conftest import wait_for
    try:
        # A scan ran meanwhile: it either says it could not read /proc, or (the old agent)
        # took every target for exited.
        wait_for(lambda: "cannot read /proc" in agent.log() or "target exited" in agent.log(), 10,
                 what="a scan while out of descriptors")
        service.call("sync", n=2)  # collection goes on: the ring buffer and the ingest need no new fd
    finally:
        subprocess.run(["prlimit", "--pid", str(daemon), "--nofile=%s:" % soft], check=True)
    wait_for(lambda: "/proc readable again" in agent.log(), 10, what="/proc readable again")
    assert "target exited" not in agent.log(), agent.log()[-3000:]
    status = agent.status()
    assert agent.target(status, service.pid)["state"] == "attached", status
    agent.wait_histogram_count("fixture:sync:duration", 3)


# --------------------------------------------------------------------------
# Who may write the config
# --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["owner", "group-writable", "others-writable", "open-directory"])
def test_a_config_others_could_write_is_refused(agent, case):
    from conftest import SYMBOLS
    base = Path(tempfile.mkdtemp(prefix="msm-cfg-", dir="/var/tmp"))
    try:
        os.chmod(base, 0o755)
        directory = base / "conf"
        directory.mkdir(mode=0o755)
        config = directory / "symbols.yaml"
        config.write_text(Path(SYMBOLS).read_text())
        os.chmod(config, 0o644)
        if case == "owner":
            os.chown(config, 65534, 65534)
            expect = "is owned by uid 65534, not root"
        elif case == "group-writable":
            os.chmod(config, 0o664)
            expect = "is writable by its group"
        elif case == "others-writable":
            os.chmod(config, 0o646)
            expect = "is writable by others"
        else:
            os.chmod(directory, 0o777)
            expect = "directory %s is writable by its group and others" % directory
        for args in (["check-config", config], ["on", "--config", config, "--listen", agent.listen]):
            proc = agent.run(*args)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            assert expect in proc.stderr and "root" in proc.stderr, (args, proc.stderr)
        assert agent.daemon_pid() is None or not os.path.exists("/proc/%d" % agent.daemon_pid())
        # Fixed, it loads.
        os.chmod(directory, 0o755)
        os.chown(config, 0, 0)
        os.chmod(config, 0o644)
        ok = agent.run("check-config", config)
        assert ok.returncode == 0, ok.stderr
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def test_a_rootless_container_is_refused_with_one_line(agent):
    """A target in its own user namespace is refused by name, and untouched."""
    port = __import__("conftest").free_port()
    # An unprivileged user's namespace: its root is host uid 65534, host root is unmapped.
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "-Ur",
           "/usr/bin/python3.11", str(fixtures_outside_tmp()), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_SERVICE_METRIC") and k != "PYTHONPATH"}
    svc = start_service(cmd, env)
    try:
        proc = agent.run("on", "--pid", svc.pid, "--listen", agent.listen)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "(a rootless container): not supported" in proc.stderr, proc.stderr
        maps = Path("/proc/%d/maps" % svc.pid).read_text()
        assert "_msm_probe" not in maps
        status = Path("/proc/%d/status" % svc.pid).read_text()
        assert "TracerPid:\t0" in status
    finally:
        agent.off()
        svc.stop()
