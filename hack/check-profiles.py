#!/usr/bin/python3
"""Checks the sandbox profiles shipped in charts/wopr-operator/files/.

seccomp (wopr-sandbox.json):
  * every syscall name resolves on x86_64 or aarch64 (libseccomp's table);
  * loaded into a child process with libseccomp (as the container runtime
    does), typical agent work still runs: a shell pipeline, git init/commit,
    Python with threads, subprocesses and sockets, Node.js;
  * and what it exists to stop is stopped: new namespaces (unshare), mount,
    ptrace, AF_ALG sockets.
AppArmor (wopr-sandbox): apparmor_parser compiles it.

Needs Debian's python3-seccomp, seccomp and apparmor packages; run with the
system Python (/usr/bin/python3), which python3-seccomp belongs to.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import seccomp

FILES = os.path.join(os.path.dirname(__file__), "..", "charts", "wopr-operator", "files")
SECCOMP = os.path.join(FILES, "wopr-sandbox.json")
APPARMOR = os.path.join(FILES, "wopr-sandbox")

OPS = {
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}

failures = []


def fail(message):
    failures.append(message)
    print("FAIL", message)


def resolves(name, arch):
    result = subprocess.run(["scmp_sys_resolver", "-a", arch, name], capture_output=True, text=True)
    return result.returncode == 0 and not result.stdout.strip().startswith("-")


def check_names(profile):
    for rule in profile["syscalls"]:
        for name in rule["names"]:
            if not (resolves(name, "x86_64") or resolves(name, "aarch64")):
                fail(f"seccomp: {name!r} is not a syscall on x86_64 or aarch64")


def action(rule, profile):
    if rule["action"] == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if rule["action"] == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(rule.get("errnoRet", profile.get("defaultErrnoRet", 1)))
    raise ValueError(f"unsupported action {rule['action']}")


def build_filter(profile):
    """The profile as a libseccomp filter for this machine's architecture."""
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    filter_ = seccomp.SyscallFilter(defaction=seccomp.ERRNO(profile["defaultErrnoRet"]))
    for rule in profile["syscalls"]:
        args = []
        for arg in rule.get("args", []):
            if arg["op"] == "SCMP_CMP_MASKED_EQ":
                args.append(seccomp.Arg(arg["index"], seccomp.MASKED_EQ, arg["value"], arg["valueTwo"]))
            else:
                args.append(seccomp.Arg(arg["index"], OPS[arg["op"]], arg["value"]))
        for name in rule["names"]:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) < 0:
                continue  # another architecture's syscall (or none: check_names says so)
            filter_.add_rule(action(rule, profile), name, *args)
    return filter_


def run_confined(filter_, argv, cwd):
    def load():
        filter_.load()

    return subprocess.run(argv, cwd=cwd, preexec_fn=load, capture_output=True, text=True, timeout=60)


PYTHON_WORK = r"""
import socket, subprocess, threading, json, hashlib, os, tempfile
results = []
threads = [threading.Thread(target=lambda: results.append(hashlib.sha256(b"x").hexdigest())) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
assert len(results) == 4
assert subprocess.run(["sh", "-c", "echo child"], capture_output=True, text=True).stdout == "child\n"
a, b = socket.socketpair(); a.sendall(b"ping"); assert b.recv(4) == b"ping"
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM); server.bind(("127.0.0.1", 0)); server.listen()
client = socket.create_connection(server.getsockname()); conn, _ = server.accept()
client.sendall(b"tcp"); assert conn.recv(3) == b"tcp"
with tempfile.NamedTemporaryFile("w") as f: json.dump({"ok": True}, f)
print("python ok")
"""

NODE_WORK = r"""
const cp = require('child_process'), fs = require('fs'), os = require('os'), path = require('path');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'n'));
fs.writeFileSync(path.join(dir, 'f'), 'x');
if (cp.execFileSync('sh', ['-c', 'echo child']).toString() !== 'child\n') process.exit(1);
require('http').createServer((q, s) => s.end('ok')).listen(0, '127.0.0.1', function () {
  require('http').get({port: this.address().port, host: '127.0.0.1'}, r => {
    r.on('data', () => {}); r.on('end', () => { console.log('node ok'); process.exit(0); });
  });
});
"""

# Each probe makes one syscall and prints its errno (0 on success).
PROBE = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); r = {call}; print(ctypes.get_errno() if r == -1 else 0)"
DENIED = {
    "unshare (a new user namespace)": "libc.unshare(0x10000000)",
    "mount": "libc.mount(b'none', b'/nonexistent-wopr', b'wopr-no-such-fs', 0, None)",
    "ptrace": "libc.ptrace(0, 0, 0, 0)",
    "AF_ALG sockets": "libc.socket(38, 5, 0)",
}
EPERM = 1


def check_workloads(profile):
    filter_ = build_filter(profile)
    work = tempfile.mkdtemp()
    env_git = ["env", "HOME=" + work, "GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@example.com",
               "GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@example.com"]
    allowed = {
        "shell pipeline": ["sh", "-c", "seq 1 100 | sort -rn | head -n 1 | grep -q 100 && ls / > /dev/null"],
        "git": env_git + ["sh", "-c", "git init -q r && cd r && echo hi > f && git add f && git commit -qm m && git log --oneline | grep -q m"],
        "python": ["/usr/bin/python3", "-c", PYTHON_WORK],
    }
    if shutil.which("node"):
        allowed["node"] = ["node", "-e", NODE_WORK]
    for what, argv in allowed.items():
        result = run_confined(filter_, argv, work)
        if result.returncode != 0:
            fail(f"seccomp: {what} failed under the profile: {result.stderr.strip()[-400:]}")
        else:
            print(f"ok   seccomp allows {what}")
    for what, call in DENIED.items():
        argv = ["/usr/bin/python3", "-c", PROBE.format(call=call)]
        unconfined = subprocess.run(argv, cwd=work, capture_output=True, text=True).stdout.strip()
        confined = run_confined(filter_, argv, work).stdout.strip()
        # The profile must be what refuses it: EPERM confined, anything else without it.
        if confined != str(EPERM) or unconfined == str(EPERM):
            fail(f"seccomp: {what}: errno {confined!r} under the profile, {unconfined!r} without it")
        else:
            print(f"ok   seccomp stops {what} (errno {unconfined} without the profile)")
    shutil.rmtree(work, ignore_errors=True)


def check_apparmor():
    result = subprocess.run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "--skip-read-cache", APPARMOR],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"apparmor: wopr-sandbox does not compile: {result.stderr.strip()}")
    else:
        print("ok   apparmor profile wopr-sandbox compiles")


def main():
    with open(SECCOMP) as f:
        profile = json.load(f)
    check_names(profile)
    check_workloads(profile)
    check_apparmor()
    if failures:
        print(f"{len(failures)} profile check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("profiles ok")


if __name__ == "__main__":
    main()
