"""Run a command under the restrictions of pop-agent.service, where systemd is not PID 1.

Run by the system interpreter (it needs python3-seccomp) as root:

    python3 sandbox_exec.py POLICY.json -- COMMAND...

POLICY.json holds ``uid``, ``gid``, ``groups`` and ``allow`` (the system calls the
unit's ``SystemCallFilter=`` leaves, expanded by ``systemd-analyze syscall-filter``).
What it reproduces, in systemd's order: the dynamic user and its supplementary
groups, an empty capability bounding set, ``PrivateUsers=yes`` (a user namespace
mapping only the service's own ids), ``NoNewPrivileges=yes``, then seccomp filters
for ``SystemCallFilter=`` (EPERM), ``SystemCallArchitectures=native``,
``RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX`` and
``MemoryDenyWriteExecute=yes`` (the same argument rules systemd installs), and execs.
The mount-namespace directives (ProtectSystem=, PrivateTmp=, ...) are not
reproduced: they need systemd's namespace setup.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import socket
import sys

import seccomp  # type: ignore[import-not-found]

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
CLONE_NEWUSER = 0x10000000
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
ALLOWED_FAMILIES = {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6}
AF_MAX = 46


def main(argv: list[str]) -> None:
    """Apply the policy in ``argv[1]`` and exec the command after ``--``."""
    with open(argv[1]) as handle:
        policy = json.load(handle)
    command = argv[argv.index("--") + 1 :]
    libc = ctypes.CDLL(None, use_errno=True)

    os.setgroups(policy["groups"])
    os.setresgid(policy["gid"], policy["gid"], policy["gid"])
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    os.setresuid(policy["uid"], policy["uid"], policy["uid"])  # clears the permitted and effective sets
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the id change made /proc/self root's; the maps below need it ours

    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{policy['uid']} {policy['uid']} 1\n")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{policy['gid']} {policy['gid']} 1\n")

    # Two stacked filters: the kernel applies the stricter answer of the two.
    restrict = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    restrict.set_attr(seccomp.Attr.CTL_NNP, 1)
    for family in range(AF_MAX):
        if family not in ALLOWED_FAMILIES:
            restrict.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    deny = seccomp.ERRNO(errno.EPERM)
    write_exec = PROT_WRITE | PROT_EXEC
    restrict.add_rule(deny, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, write_exec, write_exec))
    restrict.add_rule(deny, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    restrict.add_rule(deny, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    restrict.add_rule(deny, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    restrict.load()

    allow = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in policy["allow"]:
        with contextlib.suppress(RuntimeError, ValueError):  # a name this architecture does not have
            allow.add_rule(seccomp.ALLOW, name)
    allow.load()

    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
