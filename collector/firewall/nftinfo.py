"""What nf_tables says about itself over netlink: its generation and its table names.

Both are cheap kernel answers; `nft list tables` would fetch and decode the whole ruleset
first (~0.3 s at a thousand forwards). Call them from a thread inside the namespace.
"""
from __future__ import annotations

from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nftsocket import (NFT_MSG_GETGEN, NFT_MSG_GETTABLE, NFTSocket,
                                                  nft_gen_msg, nft_table_msg)

NFPROTO_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def generation_here() -> int:
    """+1 for every committed nf_tables transaction in this namespace."""
    with NFTSocket() as sock:
        reply = list(sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN, msg_flags=NLM_F_REQUEST))
        return int(reply[0].get_attr("NFTA_GEN_ID"))


def tables_here() -> list[str]:
    """Every table as `nft list tables` names it ("ip nat", "inet firewalld", ...)."""
    with NFTSocket(nfgen_family=0) as sock:
        return [f"{NFPROTO_NAMES.get(m['nfgen_family'], m['nfgen_family'])} "
                f"{m.get_attr('NFTA_TABLE_NAME')}"
                for m in sock.request_get(nft_table_msg(), NFT_MSG_GETTABLE)]
