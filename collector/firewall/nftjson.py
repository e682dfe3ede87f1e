"""Native nftables (`nft -j list table|ruleset`) -> the same Rule/Chain model as iptables-save.

Expressions we understand are translated into their iptables spelling (`ip daddr X` ->
`-d X`, `fib daddr type local` -> `--dst-type LOCAL`, `dnat to A:P` -> DNAT
`--to-destination A:P`), so one NAT interpreter serves both worlds; everything else is kept
as an opaque `("nft", (text,), negated)` match. Verdict maps (Docker 29's
`oifname vmap @filter-forward-in-jumps`) become target "VMAP" with one
(key, verdict) pair per element in target_args. Tables iptables-nft created are skipped:
iptables-nft-save shows them with their comments and DNAT targets intact, while here their
`xt` expressions would be opaque.

Rule.family is 4 for `ip` tables, 6 for `ip6`, and 0 for `inet` (and other) tables.
"""
from __future__ import annotations

import json
from typing import Any

from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.model import Chain, Rule

COMPAT_TABLES = frozenset({(fam, name) for fam in ("ip", "ip6")
                           for name in ("filter", "nat", "mangle", "raw", "security")}
                          | {("arp", "filter"), ("bridge", "filter"), ("bridge", "nat"),
                             ("bridge", "broute")})
FAMILIES = {"ip": 4, "ip6": 6}
_VERDICTS = {"accept": "ACCEPT", "drop": "DROP", "return": "RETURN", "continue": "CONTINUE"}
_IF_OPTIONS = {"iifname": "-i", "oifname": "-o", "iif": "-i", "oif": "-o"}


class NftJsonError(BridgescopeError):
    """`nft -j` printed something that is not its JSON ruleset."""


def parse_ruleset(text: str, *, netns: str) -> tuple[tuple[Rule, ...], tuple[Chain, ...]]:
    """Decode `nft -j list ruleset` (or `list table`); compat tables are left to
    iptables-nft-save."""
    try:
        objects = json.loads(text)["nftables"]
        return _decode(objects, netns)
    except (ValueError, LookupError, TypeError, AttributeError) as err:
        raise NftJsonError(f"cannot read the nftables ruleset of {netns}: "
                           f"{type(err).__name__} {err}") from None


def _decode(objects: list, netns: str) -> tuple[tuple[Rule, ...], tuple[Chain, ...]]:
    maps = {(o["map"]["family"], o["map"]["table"], o["map"]["name"]): o["map"].get("elem", [])
            for o in objects if isinstance(o, dict) and "map" in o}
    rules: list[Rule] = []
    chains: list[Chain] = []
    positions: dict[tuple[str, str, str], int] = {}
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        if "chain" in obj and _native(obj["chain"]):
            chains.append(_chain(obj["chain"], netns))
        elif "rule" in obj and _native(obj["rule"]):
            raw = obj["rule"]
            key = (raw["family"], raw["table"], raw["chain"])
            positions[key] = positions.get(key, 0) + 1
            rules.append(_rule(raw, netns, positions[key], maps))
    return tuple(rules), tuple(chains)


def _native(obj: dict) -> bool:
    return (obj.get("family"), obj.get("table")) not in COMPAT_TABLES


def _chain(raw: dict, netns: str) -> Chain:
    policy = raw.get("policy")
    return Chain(netns=netns, backend="nftables", family=FAMILIES.get(raw["family"], 0),
                 table=raw["table"], name=raw["name"],
                 policy=policy.upper() if policy else None,
                 hook=raw.get("hook"), hook_type=raw.get("type"),
                 priority=raw["prio"] if isinstance(raw.get("prio"), int) else None)


def _rule(raw: dict, netns: str, position: int, maps: dict) -> Rule:
    decoded = _Decoded()
    for expr in raw.get("expr", []):
        decoded.add(expr, raw, maps)
    comment = raw.get("comment")
    text = " ".join(decoded.text + ([f'comment "{comment}"'] if comment else []))
    return Rule(netns=netns, backend="nftables", family=FAMILIES.get(raw["family"], 0),
                table=raw["table"], chain=raw["chain"], text=text,
                packets=decoded.packets, bytes=decoded.bytes, matches=tuple(decoded.matches),
                target=decoded.target, target_args=tuple(decoded.target_args),
                goto=decoded.goto, comment=comment, position=position, handle=raw.get("handle"))


class _Decoded:
    """Accumulates one rule's expressions: text fragments plus their iptables meaning."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.matches: list[tuple[str, tuple[str, ...], bool]] = []
        self.target: str | None = None
        self.target_args: list[tuple[str, str]] = []
        self.goto = False
        self.packets = self.bytes = 0

    def add(self, expr: Any, raw: dict, maps: dict) -> None:
        if not isinstance(expr, dict) or len(expr) != 1:
            self._opaque(expr)
            return
        (kind, body), = expr.items()
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            self._opaque(expr)
        else:
            handler(body, raw, maps)

    def _opaque(self, expr: Any) -> None:
        text = json.dumps(expr, separators=(",", ":"), sort_keys=True)
        self.text.append(text)
        self.matches.append(("nft", (text,), False))

    # -- matches ---------------------------------------------------------------------
    def _match(self, body: dict, raw: dict, maps: dict) -> None:
        left, right, op = body.get("left"), body.get("right"), body.get("op", "==")
        negate = op == "!="
        binary = isinstance(left, dict) and any(k in left for k in ("&", "|", "^"))
        shown_op = "" if op in ("==", "in") and not binary else op + " "
        self.text.append(f"{render(left)} {shown_op}{_hex(right) if binary else render(right)}")
        translated = translate_match(left, right)
        if translated is None:
            self.matches.append(("nft", (self.text[-1],), False))
        else:
            self.matches.extend((opt, args, negate and opt not in ("-p", "-m")) for opt, args in translated)

    def _xt(self, body: dict, raw: dict, maps: dict) -> None:
        text = f"xt {body.get('type', '?')} {body.get('name', '?')}"
        self.text.append(f"({text}: an iptables-nft compat expression, see the iptables view)")
        if body.get("type") == "target":
            self.target = f"xt:{body.get('name')}"
        else:
            self.matches.append(("xt", (text,), False))

    # -- statements ------------------------------------------------------------------
    def _counter(self, body: Any, raw: dict, maps: dict) -> None:
        if isinstance(body, dict):
            self.packets, self.bytes = int(body.get("packets", 0)), int(body.get("bytes", 0))
        self.text.append("counter")

    def _verdict(self, name: str) -> None:
        self.target = _VERDICTS[name]
        self.text.append(name)

    def _accept(self, body, raw, maps): self._verdict("accept")
    def _drop(self, body, raw, maps): self._verdict("drop")
    def _return(self, body, raw, maps): self._verdict("return")
    def _continue(self, body, raw, maps): self._verdict("continue")

    def _jump(self, body: dict, raw: dict, maps: dict) -> None:
        self.target = body.get("target")
        self.text.append(f"jump {self.target}")

    def _goto(self, body: dict, raw: dict, maps: dict) -> None:
        self.target, self.goto = body.get("target"), True
        self.text.append(f"goto {self.target}")

    def _reject(self, body: Any, raw: dict, maps: dict) -> None:
        self.target = "REJECT"
        self.text.append("reject")

    def _masquerade(self, body: Any, raw: dict, maps: dict) -> None:
        self.target = "MASQUERADE"
        self.text.append("masquerade")

    def _dnat(self, body: dict, raw: dict, maps: dict) -> None:
        self._nat("DNAT", "--to-destination", "dnat", body)

    def _snat(self, body: dict, raw: dict, maps: dict) -> None:
        self._nat("SNAT", "--to-source", "snat", body)

    def _redirect(self, body: Any, raw: dict, maps: dict) -> None:
        self.target = "REDIRECT"
        port = render(body.get("port")) if isinstance(body, dict) and "port" in body else ""
        if port:
            self.target_args.append(("--to-ports", port))
        self.text.append(f"redirect to :{port}" if port else "redirect")

    def _nat(self, target: str, option: str, word: str, body: dict) -> None:
        addr = render(body.get("addr")) if body.get("addr") is not None else ""
        port = render(body.get("port")) if body.get("port") is not None else ""
        if ":" in addr and port:
            addr = f"[{addr}]"
        where = f"{addr}:{port}" if port else addr
        self.target = target
        self.target_args.append((option, where))
        family = f"{body['family']} " if body.get("family") else ""
        self.text.append(f"{word} {family}to {where}")

    def _mangle(self, body: dict, raw: dict, maps: dict) -> None:
        key, value = render(body.get("key")), render(body.get("value"))
        self.target_args.append((f"{key} set", value))
        self.text.append(f"{key} set {value}")

    def _vmap(self, body: dict, raw: dict, maps: dict) -> None:
        key, data = body.get("key"), body.get("data")
        option = _IF_OPTIONS.get(_meta_key(key) or "", render(key))
        if isinstance(data, str) and data.startswith("@"):
            elements = maps.get((raw["family"], raw["table"], data[1:]), [])
        else:
            elements = data.get("set", []) if isinstance(data, dict) else []
        self.target = "VMAP"
        self.matches.append(("vmap", (option, data if isinstance(data, str) else "{...}"), False))
        for element in elements:
            if isinstance(element, list) and len(element) == 2:
                self.target_args.append((render(element[0]), render(element[1])))
        self.text.append(f"{render(key)} vmap {data if isinstance(data, str) else render(data)}")


def translate_match(left: Any, right: Any) -> list[tuple[str, tuple[str, ...]]] | None:
    """An nft match as iptables options, or None when there is no faithful spelling."""
    if not isinstance(left, dict):
        return None
    value = render(right)
    if "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in ("ip", "ip6") and field in ("saddr", "daddr"):
            return [("-s" if field == "saddr" else "-d", (value,))]
        if proto in ("ip", "ip6") and field in ("protocol", "nexthdr"):
            return [("-p", (value,))]
        if proto in ("tcp", "udp", "sctp", "th") and field in ("dport", "sport"):
            pre = [] if proto == "th" else [("-p", (proto,)), ("-m", (proto,))]
            multi = isinstance(right, dict) and "set" in right
            option = f"--{field}s" if multi else f"--{field}"
            return pre + [(option, (value.replace("-", ":") if not multi else value,))]
    meta = _meta_key(left)
    if meta in _IF_OPTIONS:
        return [(_IF_OPTIONS[meta], (value,))]
    if meta == "l4proto":
        return [("-p", (value,))]
    if "fib" in left and left["fib"].get("result") == "type" and value == "local":
        flags = left["fib"].get("flags", [])
        option = "--dst-type" if "daddr" in flags else "--src-type"
        return [("-m", ("addrtype",)), (option, ("LOCAL",))]
    if "ct" in left and left["ct"].get("key") == "state":
        return [("-m", ("conntrack",)), ("--ctstate", (value.upper(),))]
    if "&" in left and isinstance(left["&"], list) and len(left["&"]) == 2:
        inner, mask = left["&"]
        if _meta_key(inner) == "mark":
            return [("-m", ("mark",)), ("--mark", (f"{_hex(right)}/{_hex(mask)}",))]
        if isinstance(inner, dict) and inner.get("ct", {}).get("key") == "mark":
            return [("-m", ("connmark",)), ("--ctmark", (f"{_hex(right)}/{_hex(mask)}",))]
    return None


def _meta_key(expr: Any) -> str | None:
    return expr["meta"].get("key") if isinstance(expr, dict) and "meta" in expr else None


def _hex(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) else render(value)


def render(value: Any) -> str:
    """An nft JSON value or expression in nft's own words (enough for display)."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list):
        return ",".join(render(v) for v in value)
    if not isinstance(value, dict) or len(value) != 1:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    (kind, body), = value.items()
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        return f"{render(body[0])}-{render(body[1])}"
    if kind == "set":
        return ",".join(render(v) for v in body) if isinstance(body, list) else render(body)
    if kind == "payload":
        return f"{body.get('protocol')} {body.get('field')}"
    if kind == "meta":
        key = body.get("key")
        return key if key in _IF_OPTIONS else f"meta {key}"
    if kind == "ct":
        return f"ct {body.get('key')}"
    if kind == "fib":
        return f"fib {' . '.join(body.get('flags', []))} {body.get('result')}"
    if kind in ("&", "|", "^") and isinstance(body, list):
        return f" {kind} ".join(_hex(v) for v in body)
    if kind in ("jump", "goto"):
        return f"{kind} {body.get('target')}"
    if kind in _VERDICTS:
        return kind
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
