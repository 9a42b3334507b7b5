"""Two network namespaces joined by a veth pair, and packet loss injected between them.

::

    reason = netns_unavailable()            # None, or why namespaces cannot be used here
    with NetnsPair() as pair:               # namespaces and link removed on exit, always
        pair.run("a", [sys.executable, "peer.py"])      # argv prefixed by `ip netns exec`
        loss = pair.inject_loss(10)         # LossInjector, or None (see `loss_unavailable`)
        loss.dropped()                      # packets the injected loss dropped so far

Names carry this process's pid (``hftat<pid>x<n>``), so parallel runs do not clash, and
namespaces left behind by a run that was killed are removed by the next one
(:func:`remove_stale`). Loss is injected with the first mechanism that works here:
``tc netem``; an nftables ``numgen random`` rule; an iptables ``statistic`` rule; or a
classic-BPF ``tc`` classifier (random number below a threshold) steering packets into an
HTB class whose ``pfifo`` holds zero packets, so each of them is dropped and counted.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "hftat"
CAP_NET_ADMIN = 12
SUBNET = ("10.203.0.1", "10.203.0.2")  # each namespace has its own addresses: no clash
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _has_net_admin() -> bool:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def netns_unavailable() -> str | None:
    """Why two namespaces joined by a veth pair cannot be made here, or None if they can."""
    if not os.path.exists("/proc/self/ns/net"):
        return "network namespaces need Linux (/proc/self/ns/net is missing)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0 and not _has_net_admin():
        return f"not root (euid {os.geteuid()}) and no CAP_NET_ADMIN"
    remove_stale()
    try:
        with NetnsPair():
            pass
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot make two namespaces joined by a veth pair: {exc}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces of runs whose process is gone; returns their names."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    stale = []
    for line in listed:
        name = line.split(" ", 1)[0]
        found = re.fullmatch(rf"{PREFIX}(\d+)x\d+[ab]", name)
        if found and not _pid_alive(int(found.group(1))):
            _ip("netns", "del", name, check=False)
            stale.append(name)
    return stale


@dataclass
class LossInjector:
    """Random loss on the egress of both veth ends; ``dropped()`` counts what it dropped."""

    mechanism: str
    percent: float
    _counters: list[tuple[str, list[str], str]] = field(default_factory=list)

    def dropped(self) -> int:
        total = 0
        for ns, argv, pattern in self._counters:
            out = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            found = re.search(pattern, out, re.S | re.M)
            if found is None:
                raise RuntimeError(f"no drop counter in the output of {argv}: {out!r}")
            total += int(found.group(1))
        return total


class NetnsPair:
    """Namespaces ``a`` and ``b``, veth ends ``dev["a"]``/``dev["b"]``, ``addr[...]``."""

    def __init__(self) -> None:
        base = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.ns = {"a": base + "a", "b": base + "b"}
        self.dev = {"a": "vetha", "b": "vethb"}  # made inside the namespaces: no clash
        self.addr = {"a": SUBNET[0], "b": SUBNET[1]}
        self.loss_unavailable: str | None = None
        self._made: list[str] = []

    def __enter__(self) -> NetnsPair:
        try:
            for side in "ab":
                _ip("netns", "add", self.ns[side])
                self._made.append(self.ns[side])
            _ip("link", "add", self.dev["a"], "netns", self.ns["a"], "type", "veth",
                "peer", "name", self.dev["b"], "netns", self.ns["b"])
            for side in "ab":
                ns, dev = self.ns[side], self.dev[side]
                _ip("-n", ns, "addr", "add", f"{self.addr[side]}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them)."""
        while self._made:
            _ip("netns", "del", self._made.pop(), check=False)

    def run(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` to run inside namespace ``side``."""
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def exec(self, side: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run(side, argv), capture_output=True, text=True,
                              timeout=30, check=False)

    def set_link(self, side: str, up: bool) -> None:
        _ip("-n", self.ns[side], "link", "set", self.dev[side], "up" if up else "down")

    def write_sysctl(self, side: str, path: str, value: str) -> bool:
        """Write ``/proc/sys/<path>`` inside namespace ``side``; False if refused."""
        target = "/proc/sys/" + path
        done = self.exec(side, "sh", "-c", f'printf "%s" "$1" > {target}', "sh", value)
        return done.returncode == 0

    def read_sysctl(self, side: str, path: str) -> str:
        done = self.exec(side, "cat", "/proc/sys/" + path)
        if done.returncode != 0:
            raise RuntimeError(f"cannot read {path}: {done.stderr.strip()}")
        return done.stdout.strip()

    # -- loss ---------------------------------------------------------------------------------
    def inject_loss(self, percent: float) -> LossInjector | None:
        """Drop ``percent`` % of the packets leaving each veth end, at random; None (and
        ``loss_unavailable`` says why) if no mechanism works here."""
        failures = []
        for mechanism in (self._netem, self._nftables, self._iptables, self._tc_bpf):
            injector = LossInjector(mechanism.__name__.strip("_"), percent)
            error = None
            for side in "ab":
                error = mechanism(side, percent, injector)
                if error is not None:
                    break
            if error is None:
                return injector
            failures.append(f"{injector.mechanism}: {error}")
            for side in "ab":
                self._clear_loss(side)
        self.loss_unavailable = "no way to inject packet loss here (" + "; ".join(failures) + ")"
        return None

    def _clear_loss(self, side: str) -> None:
        self.exec(side, "tc", "qdisc", "del", "dev", self.dev[side], "root")
        if shutil.which("nft"):
            self.exec(side, "nft", "delete", "table", "inet", "hftloss")
        if shutil.which("iptables"):
            self.exec(side, "iptables", "-F", "OUTPUT")

    def _steps(self, side: str, commands: list[list[str]]) -> str | None:
        for argv in commands:
            done = self.exec(side, *argv)
            if done.returncode != 0:
                return f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}"
        return None

    def _netem(self, side: str, percent: float, injector: LossInjector) -> str | None:
        dev = self.dev[side]
        error = self._steps(side, [["tc", "qdisc", "add", "dev", dev, "root", "netem",
                                    "loss", f"{percent}%"]])
        injector._counters.append((self.ns[side], ["tc", "-s", "qdisc", "show", "dev", dev],
                                   r"netem.*?dropped (\d+)"))
        return error

    def _nftables(self, side: str, percent: float, injector: LossInjector) -> str | None:
        if shutil.which("nft") is None:
            return "the `nft` command is not installed"
        error = self._steps(side, [
            ["nft", "add", "table", "inet", "hftloss"],
            ["nft", "add", "chain", "inet", "hftloss", "out",
             "{ type filter hook output priority 0 ; }"],
            ["nft", "add", "rule", "inet", "hftloss", "out", "oifname", self.dev[side],
             "numgen", "random", "mod", "10000", "<", str(int(percent * 100)), "counter", "drop"],
        ])
        injector._counters.append((self.ns[side], ["nft", "list", "chain", "inet", "hftloss",
                                                   "out"], r"counter packets (\d+)"))
        return error

    def _iptables(self, side: str, percent: float, injector: LossInjector) -> str | None:
        if shutil.which("iptables") is None:
            return "the `iptables` command is not installed"
        error = self._steps(side, [
            ["iptables", "-A", "OUTPUT", "-o", self.dev[side], "-m", "statistic", "--mode",
             "random", "--probability", str(percent / 100), "-j", "DROP"],
        ])
        injector._counters.append((self.ns[side], ["iptables", "-n", "-v", "-x", "-L",
                                                   "OUTPUT"], r"^\s*(\d+)\s+\d+\s+DROP"))
        return error

    def _tc_bpf(self, side: str, percent: float, injector: LossInjector) -> str | None:
        dev = self.dev[side]
        threshold = int(percent / 100 * 2**32)
        # A = a random u32 (ancillary load SKF_AD_RANDOM); A >= threshold: no match (ret 0);
        # else ret -1: the filter's class, whose pfifo of limit 0 drops the packet
        bytecode = f"4,32 0 0 {2**32 - 0x1000 + 56},53 1 0 {threshold},6 0 0 {2**32 - 1},6 0 0 0"
        error = self._steps(side, [
            ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
             "r2q", "100000"],
            ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
             "rate", "10gbit"],
            ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
             "rate", "10gbit"],
            ["tc", "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo",
             "limit", "0"],
            ["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
             "bpf", "bytecode", bytecode, "classid", "1:20"],
        ])
        injector._counters.append((self.ns[side], ["tc", "-s", "qdisc", "show", "dev", dev],
                                   r"pfifo 20:.*?dropped (\d+)"))
        return error
