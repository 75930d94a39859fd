"""Which network interface gloo and NCCL use between machines: the one of the route to MASTER_ADDR.

gloo and NCCL each pick an interface of their own when ``GLOO_SOCKET_IFNAME`` /
``NCCL_SOCKET_IFNAME`` are unset: gloo the address the machine's hostname resolves to (often
127.0.1.1, or an address of another network), NCCL the first interface that is not loopback or
docker (often the wrong one of several). Either way the ranks of two machines may never meet, or
meet over the slow network. The route to the master is the one answer that is right by
construction: the kernel already knows which local address reaches MASTER_ADDR, and the
interface that holds that address is the one the peers can reach this machine on.

So razor.node, on a job of several nodes, sets both variables that the user left unset to that
interface, and says so in one line. A master on loopback (every node on this machine, ``submit
--local``) sets nothing: loopback is what gloo finds there anyway.

Standard library only (razor.node imports it before anything else runs): the local address comes
from a connected UDP socket (nothing is sent), the interfaces' addresses from ``SIOCGIFADDR``
(IPv4) and ``/proc/net/if_inet6`` (IPv6).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: The variables set, each to the derived interface, when the user has not set it.
VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
#: ioctl: an interface's IPv4 address (linux/sockios.h).
_SIOCGIFADDR = 0x8915
#: Any port: a UDP ``connect`` only chooses the route and the local address, it sends nothing.
_PROBE_PORT = 9


@dataclass(frozen=True)
class Derived:
    """What :func:`socket_ifname_env` decided: the variables to set (possibly none) and the line
    razor.node logs (None: nothing to say, e.g. a one-node job)."""

    env: dict[str, str]
    message: str | None


def parse_if_inet6(text: str) -> list[tuple[str, str]]:
    """``[(interface, address)]`` from ``/proc/net/if_inet6`` (one line per address: 32 hex
    digits, index, prefix length, scope, flags, name)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        except ValueError:
            continue
        out.append((fields[5], str(addr)))
    return out


def interface_of(address: str, addresses: Iterable[tuple[str, str]]) -> str | None:
    """The interface that holds ``address``, from ``(interface, address)`` pairs (None: none)."""
    want = ipaddress.ip_address(address.split("%", 1)[0])
    for name, addr in addresses:
        try:
            if ipaddress.ip_address(addr.split("%", 1)[0]) == want:
                return name
        except ValueError:
            continue
    return None


def local_addresses() -> list[tuple[str, str]]:
    """Every ``(interface, address)`` of this machine (this network namespace): IPv4 by ioctl,
    IPv6 from /proc/net/if_inet6."""
    out: list[tuple[str, str]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)
            except OSError:  # no IPv4 address on it
                continue
            out.append((name, socket.inet_ntoa(res[20:24])))
    try:
        with open("/proc/net/if_inet6") as fh:
            out += parse_if_inet6(fh.read())
    except OSError:
        pass
    return out


def source_address(master_addr: str) -> str:
    """The local address the kernel picks to reach ``master_addr`` (a name or an address); an
    OSError when it does not resolve or no route leads there."""
    family, _, _, _, sockaddr = socket.getaddrinfo(master_addr, _PROBE_PORT, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)
        return sock.getsockname()[0]


def socket_ifname_env(environ: Mapping[str, str],
                      source: Callable[[str], str] = source_address,
                      addresses: Callable[[], Iterable[tuple[str, str]]] = local_addresses) -> Derived:
    """The interface variables razor.node adds for its training processes, from the node's
    environment (``NNODES``, ``MASTER_ADDR``, and the variables the user may have set).

    Nothing for a one-node job, when both variables are set, or when the route to the master is
    loopback. Otherwise each unset variable gets the interface that holds the local address of
    the route to MASTER_ADDR (``NCCL_SOCKET_IFNAME`` as ``=NAME``: NCCL matches a bare name as a
    prefix, so ``eth1`` would also take ``eth10``). Never raises: a route that cannot be found
    is said, and gloo and NCCL then choose as they always do."""
    unset = [name for name in VARIABLES if not environ.get(name)]
    master = environ.get("MASTER_ADDR") or environ.get("PET_MASTER_ADDR") or ""
    nnodes = environ.get("NNODES") or environ.get("PET_NNODES") or "1"
    if not unset or not master or not nnodes.isdigit() or int(nnodes) < 2:
        return Derived({}, None)
    try:
        local = source(master)
        if ipaddress.ip_address(local.split("%", 1)[0]).is_loopback:
            return Derived({}, None)
        name = interface_of(local, addresses())
    except (OSError, ValueError, IndexError) as exc:
        return Derived({}, f"cannot find the route to MASTER_ADDR {master} ({exc}); "
                           f"{' and '.join(unset)} left unset (gloo and NCCL choose an interface themselves)")
    if name is None:
        return Derived({}, f"no interface holds {local}, the local address of the route to MASTER_ADDR "
                           f"{master}; {' and '.join(unset)} left unset")
    env = {var: f"={name}" if var == "NCCL_SOCKET_IFNAME" else name for var in unset}
    users = " and ".join(var.split("_")[0].lower().replace("nccl", "NCCL") for var in unset)
    sets = " ".join(f"{k}='{v}'" if v.startswith("=") else f"{k}={v}" for k, v in env.items())
    return Derived(env, f"network interface {name} for {users}: it holds {local}, the local address of the "
                        f"route to MASTER_ADDR {master} (set {sets}; set them yourself to choose another)")
