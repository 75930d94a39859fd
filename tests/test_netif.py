"""razor.netif: the interface of the route to MASTER_ADDR, for gloo and NCCL (pure parts, with
the route and the interfaces given; the real route is taken in tests/test_two_machines.py)."""

from __future__ import annotations

import pytest

from razor.netif import Derived, interface_of, parse_if_inet6, socket_ifname_env, source_address

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 00     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000007 05 40 00 00  ens1f0np0
garbage line
"""

ADDRESSES = [("lo", "127.0.0.1"), ("eth0", "192.0.2.2"), ("ib0", "10.81.0.2"), ("eth0", "fd00::2"),
             ("lo", "::1")]


def derive(environ: dict[str, str], local: str = "10.81.0.2") -> Derived:
    return socket_ifname_env(environ, source=lambda master: local, addresses=lambda: ADDRESSES)


def test_parse_if_inet6_names_each_address_its_interface():
    assert parse_if_inet6(IF_INET6) == [("lo", "::1"), ("eth0", "fd00::2"), ("eth0", "fe80::fc:ff:fe00:1"),
                                        ("ens1f0np0", "2001:db8::7")]


def test_interface_of_finds_the_holder_of_an_address():
    assert interface_of("10.81.0.2", ADDRESSES) == "ib0"
    assert interface_of("fd00:0::2", ADDRESSES) == "eth0"  # compared as addresses, not as text
    assert interface_of("fe80::1%eth0", [("eth0", "fe80::1")]) == "eth0"
    assert interface_of("10.9.9.9", ADDRESSES) is None


def test_a_multi_node_job_gets_the_interface_of_the_route_to_the_master():
    d = derive({"NNODES": "2", "MASTER_ADDR": "10.81.0.1"})
    assert d.env == {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "=ib0"}
    assert d.message == ("network interface ib0 for gloo and NCCL: it holds 10.81.0.2, the local address of the "
                         "route to MASTER_ADDR 10.81.0.1 (set GLOO_SOCKET_IFNAME=ib0 NCCL_SOCKET_IFNAME='=ib0'; "
                         "set them yourself to choose another)")


def test_the_master_node_uses_the_interface_that_holds_its_own_address():
    # Node 0's route to its own address leads through lo, but the address is ib0's.
    assert derive({"NNODES": "2", "MASTER_ADDR": "10.81.0.2"}).env["GLOO_SOCKET_IFNAME"] == "ib0"


def test_torchruns_variable_names_are_read_too():
    assert derive({"PET_NNODES": "3", "PET_MASTER_ADDR": "node0"}).env["GLOO_SOCKET_IFNAME"] == "ib0"


@pytest.mark.parametrize("environ", [
    {"NNODES": "1", "MASTER_ADDR": "10.81.0.1"},
    {"NNODES": "2"},
    {"NNODES": "2", "MASTER_ADDR": "10.81.0.1", "GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"},
], ids=["one-node", "no-master", "both-set"])
def test_nothing_to_derive(environ):
    assert derive(environ) == Derived({}, None)


@pytest.mark.parametrize("local", ["127.0.0.1", "127.0.1.1", "::1"])
def test_a_master_on_loopback_sets_nothing(local):
    assert derive({"NNODES": "2", "MASTER_ADDR": "localhost"}, local=local) == Derived({}, None)


def test_what_the_user_set_is_kept_and_only_the_other_is_derived():
    d = derive({"NNODES": "2", "MASTER_ADDR": "10.81.0.1", "NCCL_SOCKET_IFNAME": "mlx5"})
    assert d.env == {"GLOO_SOCKET_IFNAME": "ib0"}
    assert d.message.startswith("network interface ib0 for gloo: ")


def test_no_route_is_said_and_sets_nothing():
    def unreachable(master: str) -> str:
        raise OSError(101, "Network is unreachable")

    d = socket_ifname_env({"NNODES": "2", "MASTER_ADDR": "10.81.0.1"}, source=unreachable,
                          addresses=lambda: ADDRESSES)
    assert d.env == {}
    assert d.message == ("cannot find the route to MASTER_ADDR 10.81.0.1 ([Errno 101] Network is unreachable); "
                         "GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME left unset (gloo and NCCL choose an "
                         "interface themselves)")


def test_a_local_address_on_no_interface_is_said():
    d = derive({"NNODES": "2", "MASTER_ADDR": "10.81.0.1"}, local="10.99.0.5")
    assert d.env == {} and "no interface holds 10.99.0.5" in d.message


def test_the_kernel_picks_loopback_for_a_loopback_master():
    """The one real lookup that works on every machine: 127.0.0.1 is reached from loopback."""
    assert source_address("127.0.0.1") == "127.0.0.1"
    assert socket_ifname_env({"NNODES": "2", "MASTER_ADDR": "127.0.0.1"}) == Derived({}, None)
