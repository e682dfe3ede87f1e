"""What nf_tables says about itself over netlink: its generation and its table names.

Both are cheap kernel answers; `nft list tables` would fetch and decode the whole ruleset
first (~0.3 s at a thousand forwards). A raw NETLINK_NETFILTER socket with collector/rtnl's
framing keeps pyroute2 (0.1 s to import) out of the read path. Call them from a thread
inside the namespace: the socket belongs to the namespace of the thread that opens it.
"""
from __future__ import annotations

import os
import socket
import struct

from bridgescope.collector.kernel import rtnl

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_GETGEN = 16
NFTA_TABLE_NAME = 1
NFTA_GEN_ID = 1
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian, 0 here)
NLMSG_HDRLEN = 16
NFPROTO_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def generation_here() -> int:
    """+1 for every committed nf_tables transaction in this namespace."""
    (reply,) = _ask(NFT_MSG_GETGEN, rtnl.NLM_F_REQUEST)
    return struct.unpack(">I", _attrs(reply)[NFTA_GEN_ID][:4])[0]


def tables_here() -> list[str]:
    """Every table as `nft list tables` names it ("ip nat", "inet firewalld", ...)."""
    return [_table_name(msg) for msg in _ask(NFT_MSG_GETTABLE, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP)]


def _table_name(msg: rtnl.Message) -> str:
    family = msg.data[NLMSG_HDRLEN]
    name = _attrs(msg)[NFTA_TABLE_NAME].rstrip(b"\0").decode()
    return f"{NFPROTO_NAMES.get(family, family)} {name}"


def _attrs(msg: rtnl.Message) -> dict[int, bytes]:
    return rtnl.attrs(msg.data, NLMSG_HDRLEN + _NFGENMSG.size)


def _ask(command: int, flags: int) -> list[rtnl.Message]:
    """Send one nf_tables request; the replies up to the end of a dump (or the only one)."""
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | command
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_NETFILTER) as sock:
        sock.sendall(rtnl.request(mtype, flags, 1, _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)))
        replies: list[rtnl.Message] = []
        while True:
            for msg in rtnl.messages(sock.recv(1 << 16)):
                if msg.type == rtnl.NLMSG_ERROR:
                    if msg.error:
                        raise OSError(msg.error, f"nf_tables: {os.strerror(msg.error)}")
                    return replies
                if msg.type == rtnl.NLMSG_DONE:
                    return replies
                replies.append(msg)
                if not flags & rtnl.NLM_F_DUMP:
                    return replies
