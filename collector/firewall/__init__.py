"""Firewall readers: iptables-legacy, iptables-nft and native nftables, one rule model."""
