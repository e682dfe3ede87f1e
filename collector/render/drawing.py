"""The elements a picture drew, by id, with the indexes that find what a change touches (a
namespace's elements, an interface's edges, the NAT elements) without a pass over them all."""
from __future__ import annotations

from collections.abc import Iterable

NAT_KINDS = ("portforward", "masquerade")


class Drawing:
    """The elements by id (nodes, then edges, each in the order drawn), with what finds the
    ones a change touches without a pass over all of them: a namespace's interfaces and the
    edges with an end in it, an interface's edges, and the NAT elements (redrawn each time)."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.edges: dict[str, dict] = {}
        self.by_ns: dict[str, frozenset[str]] = {}
        self.by_end: dict[str, frozenset[str]] = {}
        self.nat: frozenset[str] = frozenset()

    @classmethod
    def of(cls, elements: list[dict]) -> Drawing:
        drawing = cls()
        drawing._add(elements)
        return drawing

    def size(self) -> int:
        return len(self.nodes) + len(self.edges)

    def get(self, element_id: str) -> dict | None:
        return self.nodes.get(element_id) or self.edges.get(element_id)

    def elements(self) -> list[dict]:
        return [*self.nodes.values(), *self.edges.values()]

    def touching(self, nodes: set[str], ifaces: set[str], whole: set[str]) -> set[str]:
        """Ids of what a redraw of these namespace nodes, interfaces and whole namespaces
        replaces: those nodes, every element of the namespaces, the interfaces' edges, NAT."""
        out = set(self.nat)
        out.update(i for i in nodes if i in self.nodes)
        out.update(i for i in ifaces if i in self.nodes)
        for ns_id in whole:
            out |= self.by_ns.get(ns_id, frozenset())
        for if_id in ifaces:
            out |= self.by_end.get(if_id, frozenset())
        return out

    def held(self, parent: str) -> list[dict]:
        """The nodes inside a namespace's box (or beside the host): its interfaces, its forwards."""
        out = [self.nodes[i] for i in self.by_ns.get(parent, ()) if i in self.nodes]
        return out + [n for n in self.forwards() if n["data"]["parent"] == parent]

    def forwards(self) -> list[dict]:
        return [self.nodes[i] for i in self.nat if i in self.nodes]

    def patched(self, added: list[dict], removed: list[dict], changed: dict[str, dict]) -> Drawing:
        """A new drawing (this one unchanged): removed ones out, changed ones in their place,
        added ones at the end of their group."""
        out = Drawing()
        out.nodes, out.edges = dict(self.nodes), dict(self.edges)
        out.by_ns, out.by_end, out.nat = dict(self.by_ns), dict(self.by_end), self.nat
        out._remove(removed)
        for element_id, element in changed.items():
            (out.nodes if element["group"] == "nodes" else out.edges)[element_id] = element
        out._add(added)
        return out

    def _add(self, elements: Iterable[dict]) -> None:
        by_ns, by_end, nat = self._sort(elements, add=True)
        for index, entries in ((self.by_ns, by_ns), (self.by_end, by_end)):
            for key, ids in entries.items():
                index[key] = index.get(key, frozenset()) | ids
        self.nat = self.nat | nat if nat else self.nat

    def _remove(self, elements: Iterable[dict]) -> None:
        by_ns, by_end, nat = self._sort(elements, add=False)
        for index, entries in ((self.by_ns, by_ns), (self.by_end, by_end)):
            for key, ids in entries.items():
                if rest := index.get(key, frozenset()) - ids:
                    index[key] = rest
                else:
                    index.pop(key, None)
        self.nat = self.nat - nat if nat else self.nat

    def _sort(self, elements: Iterable[dict], *, add: bool
              ) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
        """Put the elements in (or take them out of) their group; their index entries, one set
        per entry (a namespace holds a thousand elements: one union each, not a thousand)."""
        by_ns: dict[str, set[str]] = {}
        by_end: dict[str, set[str]] = {}
        nat: set[str] = set()
        for element in elements:
            data = element["data"]
            element_id, kind = data["id"], data["kind"]
            nodes = element["group"] == "nodes"
            group = self.nodes if nodes else self.edges
            if add:
                group[element_id] = element
            else:
                group.pop(element_id, None)
            if kind in NAT_KINDS:
                nat.add(element_id)
            elif nodes:
                if kind != "namespace":
                    by_ns.setdefault(data["netns"], set()).add(element_id)
            else:
                for end in (data["source"], data["target"]):
                    by_ns.setdefault(_interface_ns(end), set()).add(element_id)
                    by_end.setdefault(end, set()).add(element_id)
        return by_ns, by_end, nat


def _interface_ns(element_id: str) -> str:
    return element_id.split("/", 1)[0]
