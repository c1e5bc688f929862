"""Running an untrusted Python program in a throwaway Linux sandbox, with limits that hold.

:func:`run_python` writes the program's files to a fresh temporary directory and runs
``python -I <script>`` there under a *supervisor* (this file, run as a script) and, when
isolation is on, inside new Linux namespaces made by util-linux ``unshare``:

- **PID** namespace: the program sees only its own processes (no ``/proc/<parent>/environ``);
  the supervisor is the namespace's init, so when it exits or is killed every process the
  program started dies with it, detached (``setsid``) or not.
- **network**, **IPC**, **UTS**, **cgroup** namespaces: no interface but a downed loopback, so
  no network at all; no shared System V IPC; a private hostname.
- **mount** namespace with a new root: a small read-only ``tmpfs`` holding read-only binds of
  the system directories (``/usr``, ``/lib*``, ``/bin``...), the Python installation (and the
  virtual environment) and a few ``/etc`` files the loader needs; a writable size-capped
  ``/tmp`` holding the program; ``/dev/{null,zero,full,random,urandom}``; a ``/proc`` of the new
  PID namespace only. The old root is detached, so ``$HOME``, the repository and every other
  file are out of reach.
- **identity**: as root (where mounting needs no user namespace) the program runs as a fresh,
  random unprivileged uid that owns no file and no other process; as a normal user it runs in a
  nested user namespace without capabilities. ``no_new_privs`` is set; every bind is ``nosuid``.

In both modes, and without isolation, the program gets a minimal environment (never the
parent's), rlimits on address space, CPU time, file size, open files, core dumps and -- where
the count is the program's own (isolated) -- processes, and its stdout/stderr are read with a
deadline and capped (:class:`Limits`), so neither a flood of output nor a grandchild holding
the pipes can stall or bloat the caller. Without isolation the supervisor is a child
subreaper that kills every leftover descendant when the program ends.

:func:`isolation` says once per process whether the sandbox works here, by running a trivial
program in it: it needs Linux, ``unshare``, and permission to create the namespaces (root with
``CAP_SYS_ADMIN``, or unprivileged user namespaces for other users). Typical refusals: a Docker
container without ``--privileged`` (seccomp and missing capabilities), or
``kernel.unprivileged_userns_clone=0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

__all__ = ["Limits", "Outcome", "isolation", "run_python"]

SETUP_FAILED = 125  # the supervisor's exit status when the sandbox could not be set up
_SETUP_MARK = "ember-sandbox: "
_SEARCH_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/nix/store")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_RUN_DIR = "/tmp/run"  # the program's working directory inside the sandbox


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one run may use. ``max_output_bytes`` counts stdout and stderr together; past it the run is killed."""

    timeout: float = 10.0
    memory_mb: int = 512
    max_processes: int = 64
    max_output_bytes: int = 16 * 2**20
    keep_bytes: int = 64 * 2**10  # of each stream, its tail, kept for the caller
    file_mb: int = 16
    tmp_mb: int = 64
    open_files: int = 256


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended. ``returncode`` is the program's (128 + n when signal n killed it); ``stdout``/``stderr`` are tails."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output_exceeded: bool = False
    isolated: bool = False
    setup_error: str | None = None


# --- availability ---------------------------------------------------------------------------------

_probe_lock = threading.Lock()
_probe: tuple[str | None, str] | None = None


def isolation() -> tuple[str | None, str]:
    """``(mode, reason)``: ``mode`` is ``"root"`` or ``"user"`` when the sandbox works here, else ``None``
    and ``reason`` says why. Probed once per process by running a trivial program in the sandbox."""
    global _probe
    with _probe_lock:
        if _probe is None:
            _probe = _detect()
        return _probe


def _detect() -> tuple[str | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"Linux namespaces do not exist on {sys.platform}"
    if not sys.executable or not os.path.isabs(sys.executable):
        return None, "the Python interpreter's path is unknown"
    if _unshare() is None:
        return None, "util-linux `unshare` was not found"
    mode = "root" if os.geteuid() == 0 else "user"
    probe = "print('ember-sandbox-ok')\n"
    outcome = _run({"probe.py": probe}, ["probe.py"], limits=Limits(timeout=10.0), stdin=b"", mode=mode)
    if outcome.returncode == 0 and outcome.stdout.strip() == b"ember-sandbox-ok":
        return mode, f"Linux namespaces ({'as root, a fresh uid' if mode == 'root' else 'user namespace'})"
    said = (outcome.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {outcome.returncode}"])[-1]
    return None, f"`unshare` could not create the sandbox ({said.removeprefix(_SETUP_MARK)})"


def _unshare() -> str | None:
    return shutil.which("unshare") or shutil.which("unshare", path=_SEARCH_PATH)


# --- running --------------------------------------------------------------------------------------


def run_python(files: Mapping[str, str | bytes], args: Sequence[str], *, limits: Limits, stdin: bytes = b"", isolate: bool) -> Outcome:
    """Run ``python -I *args`` in a fresh directory holding ``files``; sandboxed when ``isolate``
    (which needs :func:`isolation` to have found a mode), else only limited. Returns within
    ``limits.timeout`` plus a fraction of a second whatever the program does."""
    mode = isolation()[0] if isolate else None
    if isolate and mode is None:
        raise RuntimeError(f"isolation is unavailable: {isolation()[1]}")
    return _run(files, args, limits=limits, stdin=stdin, mode=mode)


def _run(files: Mapping[str, str | bytes], args: Sequence[str], *, limits: Limits, stdin: bytes, mode: str | None) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="ember-sandbox-") as top:
        work = os.path.join(top, "work")
        os.mkdir(work)
        for name, content in files.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        config = {
            "mode": mode,
            "argv": [sys.executable, "-I", *args],
            "rlimits": _rlimits(limits, count_processes=mode is not None),
        }
        if mode is None:
            config |= {"cwd": work, "env": _environ(home=work)}
            command = [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)]
        else:
            os.mkdir(root := os.path.join(top, "root"))
            binds, links = _layout()
            uid = _fresh_id() if mode == "root" else os.getuid()
            gid = uid if mode == "root" else os.getgid()
            config |= {"cwd": _RUN_DIR, "env": _environ(home=_RUN_DIR), "root": root, "files": work, "binds": binds,
                       "links": links, "uid": uid, "gid": gid, "tmp_mb": limits.tmp_mb}  # fmt: skip
            flags = ["--pid", "--fork", "--mount", "--net", "--ipc", "--uts", "--cgroup", "--propagation", "private"]
            user = ["--user", "--map-root-user"] if mode == "user" else []
            command = [_unshare() or "unshare", *user, *flags, "--", sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)]
        return _communicate(command, cwd=work, stdin=stdin, limits=limits, isolated=mode is not None)


def _rlimits(limits: Limits, *, count_processes: bool) -> list[tuple[str, int]]:
    # RLIMIT_NPROC counts every process of the uid; only the sandbox's fresh uid (or nested user
    # namespace) makes that the program's own count. Unisolated, it would count the user's shell too.
    return [("RLIMIT_AS", limits.memory_mb * 2**20), ("RLIMIT_CPU", int(limits.timeout) + 1),
            ("RLIMIT_FSIZE", limits.file_mb * 2**20), ("RLIMIT_NOFILE", limits.open_files), ("RLIMIT_CORE", 0),
            *([("RLIMIT_NPROC", limits.max_processes)] if count_processes else [])]  # fmt: skip


def _environ(*, home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": home, "TMPDIR": home}


def _fresh_id() -> int:
    """A random uid (also used as gid) that no user or file on this machine has: root mode runs the
    program as it, so RLIMIT_NPROC counts the program's processes only and no file is its own."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    except OSError:
        ranges = [(0, 0, 2**32 - 1)]
    inside, _, count = max(ranges, key=lambda r: r[2])
    low, high = (2**30, 2**31 - 2) if inside + count > 2**31 else (inside + count // 2, inside + count - 2)
    return low + secrets.randbelow(max(1, high - low))


_layout_cache: tuple[list[tuple[str, str]], list[tuple[str, str]]] | None = None


def _layout() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(binds, links)`` of the sandbox's root: ``(source, target)`` read-only binds of the system
    directories, the Python installation and the loader's ``/etc`` files; top-level symlinks (``/bin``
    on a merged-``/usr`` system) are recreated as links rather than bound."""
    global _layout_cache
    if _layout_cache is not None:
        return _layout_cache
    wanted: list[str] = [*_SYSTEM_DIRS, *_ETC_FILES]
    for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        wanted += [os.path.abspath(path), os.path.realpath(path)]
    hop = os.path.abspath(sys.executable)
    for _ in range(16):  # every directory on the interpreter's symlink chain
        wanted.append(os.path.dirname(hop))
        if not os.path.islink(hop):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    binds: list[tuple[str, str]] = []
    links: list[tuple[str, str]] = []
    for path in sorted(set(wanted), key=lambda p: (p.count("/"), p)):
        if not os.path.lexists(path) or path == "/" or any(path == t or path.startswith(t.rstrip("/") + "/") for _, t in binds + links):
            continue
        if os.path.islink(path) and os.path.dirname(path) == "/":
            links.append((os.readlink(path), path))
        else:
            binds.append((os.path.realpath(path), path))
    _layout_cache = (binds, links)
    return _layout_cache


def _communicate(command: list[str], *, cwd: str, stdin: bytes, limits: Limits, isolated: bool) -> Outcome:
    """Run ``command`` in a new session; read both pipes against the deadline, keeping tails; kill
    the whole tree at the deadline or past the output cap. Never waits on a pipe without a deadline."""
    deadline = time.monotonic() + limits.timeout
    process = subprocess.Popen(command, cwd=cwd, env=_environ(home=cwd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True, close_fds=True)  # fmt: skip
    try:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        try:
            process.stdin.write(stdin)
            process.stdin.close()
        except OSError:  # it exited already; what it said is still read below
            pass
        tails = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
        total, timed_out, exceeded, exited_at = 0, False, False, None
        with selectors.DefaultSelector() as selector:
            for fd in tails:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                now = time.monotonic()
                if exited_at is None and process.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.2:
                    break  # something the program left behind holds the pipes; it is killed below
                if now >= deadline:
                    timed_out = True
                    break
                for key, _ in selector.select(min(deadline - now, 0.05)):
                    try:
                        chunk = os.read(key.fd, 2**16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    total += len(chunk)
                    tail = tails[key.fd]
                    tail += chunk
                    if len(tail) > 2 * limits.keep_bytes:
                        del tail[: -limits.keep_bytes]
                if total > limits.max_output_bytes:
                    exceeded = True
                    break
        _kill_tree(process)
        returncode = process.returncode
        stdout, stderr = (bytes(tails[p.fileno()][-limits.keep_bytes :]) for p in (process.stdout, process.stderr))
    finally:
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    said = stderr.decode(errors="replace")
    setup_error = said.split(_SETUP_MARK, 1)[1].strip() if returncode == SETUP_FAILED and _SETUP_MARK in said else None
    return Outcome(returncode, stdout, stderr, timed_out, exceeded, isolated, setup_error)


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill what is left of a run and reap ``process``: first its direct children (in a sandbox, the
    PID namespace's init, which takes every process in it along; unisolated, the program and the
    orphans the supervisor adopted, after which the supervisor kills the rest and exits), then,
    if it is still there, its whole process group -- while it is unreaped, so the group is its own."""
    if process.poll() is not None:
        return
    for child in _children(process.pid):
        _signal(child, signal.SIGKILL)
    try:
        process.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            process.kill()
        process.wait()


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``, read from ``/proc`` (empty where there is none)."""
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 1 and int(fields[1]) == pid:
                found.append(int(name))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


# --- the supervisor: this file run as a script, stdlib only ---------------------------------------

_MS = {"RDONLY": 1, "NOSUID": 2, "NODEV": 4, "NOEXEC": 8, "REMOUNT": 32, "BIND": 4096, "REC": 16384, "PRIVATE": 1 << 18}
_ST_TO_MS = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}  # statvfs flags a remount must keep
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 217, "arm64": 217, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217, "i686": 217, "armv7l": 218}
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 36, 38
_CLONE_NEWUSER = 0x10000000


def _supervise(config: dict) -> None:
    """Set the sandbox up (when ``config["mode"]``), start the program as a child with its rlimits,
    wait for it, kill whatever it left, and exit with its status (128 + n for signal n)."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    linux = sys.platform.startswith("linux")
    try:
        if config["mode"]:
            _enter(libc, config)
        else:
            os.chdir(config["cwd"])
            if linux:
                libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back here, to be killed
        if linux:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # and this dies with its parent
    except Exception as exc:  # noqa: BLE001 -- reported to the caller, which falls back or fails the run
        os.write(2, f"{_SETUP_MARK}{exc}\n".encode())
        os._exit(SETUP_FAILED)
    child = os.fork()
    if child == 0:
        try:
            for name, value in config["rlimits"]:
                resource.setrlimit(getattr(resource, name), (value, value))
            os.execve(config["argv"][0], config["argv"], config["env"])
        finally:
            os._exit(127)
    while True:  # reap every child (orphans included) until the program itself ends
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    for _ in range(1000):  # kill the leftovers; their orphans come back here, until none is left
        left = _children(os.getpid())
        if not left:
            break
        for pid in left:
            _signal(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _enter(libc, config: dict) -> None:
    """Build the new root, pivot into it, detach the old one, and drop to an unprivileged identity."""

    import ctypes

    def fail(what):
        number = ctypes.get_errno()
        return OSError(number, f"{what}: {os.strerror(number)}")

    def mount(source, target, fstype, flags, data=None):
        if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()):
            raise fail(f"mount {target}")

    def kept_flags(path):
        flags = os.statvfs(path).f_flag
        return sum(ms for st, ms in _ST_TO_MS.items() if flags & st)

    ms, root, uid, gid = _MS, config["root"], config["uid"], config["gid"]
    mount(None, "/", None, ms["REC"] | ms["PRIVATE"])
    mount("tmpfs", root, "tmpfs", ms["NOSUID"] | ms["NODEV"], "mode=0755,size=4m")
    tmp = root + "/tmp"
    os.mkdir(tmp)
    mount("tmpfs", tmp, "tmpfs", ms["NOSUID"] | ms["NODEV"], f"mode=1777,size={config['tmp_mb']}m")
    run = root + _RUN_DIR
    os.mkdir(run, 0o700)
    for name in os.listdir(config["files"]):
        with open(os.path.join(config["files"], name), "rb") as src, open(os.path.join(run, name), "wb") as dst:
            dst.write(src.read())
        os.chown(os.path.join(run, name), uid if config["mode"] == "root" else 0, gid if config["mode"] == "root" else 0)
    os.chown(run, uid if config["mode"] == "root" else 0, gid if config["mode"] == "root" else 0)
    os.mkdir(root + "/dev")
    mount("tmpfs", root + "/dev", "tmpfs", ms["NOSUID"], "mode=0755,size=64k")
    for name in _DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, ms["BIND"])
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("shm", "/tmp")):  # fmt: skip
        os.symlink(target, f"{root}/dev/{link}")
    os.mkdir(root + "/proc")
    proc_flags = ms["NOSUID"] | ms["NODEV"] | ms["NOEXEC"]
    try:  # only the processes, not /proc/sys and friends (Linux >= 5.8)
        mount("proc", root + "/proc", "proc", proc_flags, "subset=pid")
    except OSError:
        mount("proc", root + "/proc", "proc", proc_flags)
    for source, target in config["binds"]:
        path = root + target
        if os.path.isdir(source):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        mount(source, path, None, ms["BIND"])
        mount(None, path, None, ms["BIND"] | ms["REMOUNT"] | ms["RDONLY"] | ms["NOSUID"] | ms["NODEV"] | kept_flags(source))
    for link, path in config["links"]:
        os.symlink(link, root + path)
    mount(None, root, None, ms["BIND"] | ms["REMOUNT"] | ms["RDONLY"] | ms["NOSUID"] | ms["NODEV"])
    os.chdir(root)
    number = _PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    if libc.syscall(number, b".", b".") or libc.umount2(b".", 2):  # 2: MNT_DETACH, the old root goes away
        raise fail("pivot_root")
    os.chdir(_RUN_DIR)
    if config["mode"] == "root":
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # from uid 0 to none: every capability goes
    else:  # a nested user namespace mapping a non-root uid: the program's exec drops every capability
        if libc.unshare(_CLONE_NEWUSER):
            raise fail("unshare(CLONE_NEWUSER)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} 0 1"), ("gid_map", f"{gid} 0 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise fail("prctl(PR_SET_NO_NEW_PRIVS)")


if __name__ == "__main__":
    _supervise(json.loads(sys.argv[1]))
