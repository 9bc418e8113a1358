"""A radix tree over token ids that owns the KV slots of cached prefixes (SGLang's RadixAttention).

Each edge holds a run of token ids and the KV slots holding them; a path from the root spells
a cached prefix. One tree per ``extra_key`` (the LoRA adapter, or None), so KV is shared only
under the same key. Slots are shared, never copied: a request that matches a prefix puts the
tree's slot ids at the start of its own slot list.

* ``match_prefix`` walks the tree, splitting an edge where the match ends inside it, and locks
  the last node: a lock counts on the node and all its ancestors, so nodes in use are never
  evicted. Locked slots are not in :meth:`evictable_size`.
* ``insert`` adds a sequence's tokens and slots, taking its new slots; tokens the tree already
  holds under other slots (computed twice at once) get the tree's slots, and the caller's
  duplicates go back to the pool.
* ``evict`` frees unlocked leaves, least recently used first (a parent whose last child went
  becomes a leaf in turn), until enough slots are free.

The same class without a pool (``kv_pool=None``) serves as a plain token trie: the scheduler
uses one per step to notice requests that share a prefix not cached yet.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from serving.memory import KVPool
from serving.prefix_cache import EMPTY_MATCH, ExtraKey, PrefixMatch


class RadixNode:
    """One edge of the tree: its token ids, the slots holding them, children by first token."""

    __slots__ = ("children", "key", "last_access", "lock_count", "parent", "slots")

    def __init__(self, key: list[int], slots: list[int], parent: RadixNode | None, last_access: int) -> None:
        self.key = key
        self.slots = slots
        self.parent = parent
        self.children: dict[int, RadixNode] = {}
        self.lock_count = 0
        self.last_access = last_access

    def __lt__(self, other: RadixNode) -> bool:  # heap order for LRU eviction
        return self.last_access < other.last_access


def _common_length(a: list[int], b: Sequence[int], start: int) -> int:
    """Length of the common prefix of ``a`` and ``b[start:]``."""
    limit = min(len(a), len(b) - start)
    if a[:limit] == list(b[start : start + limit]):  # the usual case, compared at C speed
        return limit
    i = 0
    while i < limit and a[i] == b[start + i]:
        i += 1
    return i


class RadixCache:
    """The prefix cache of the engine (implements :class:`~serving.prefix_cache.PrefixCache`)."""

    def __init__(self, kv_pool: KVPool | None) -> None:
        self.kv_pool = kv_pool
        self._roots: dict[ExtraKey, RadixNode] = {}
        self._clock = itertools.count(1)
        self._total = 0  # slots in the tree
        self._evictable = 0  # slots in unlocked nodes

    # ----- the PrefixCache interface -----------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int], extra_key: ExtraKey = None) -> PrefixMatch:
        node, slots = self._walk(token_ids, extra_key, split=True)
        if not slots:
            return EMPTY_MATCH
        self._lock(node)
        return PrefixMatch(tuple(slots), node)

    def insert(
        self, token_ids: Sequence[int], slots: Sequence[int], extra_key: ExtraKey = None
    ) -> PrefixMatch:
        if len(token_ids) != len(slots):
            raise ValueError(f"{len(token_ids)} tokens but {len(slots)} slots")
        if not token_ids:
            return EMPTY_MATCH
        now = next(self._clock)
        node = self._root(extra_key)
        node.last_access = now
        matched: list[int] = []
        duplicates: list[int] = []
        position = 0
        while position < len(token_ids):
            child = node.children.get(token_ids[position])
            if child is None:
                leaf = RadixNode(list(token_ids[position:]), list(slots[position:]), node, now)
                node.children[token_ids[position]] = leaf
                self._total += len(leaf.slots)
                self._evictable += len(leaf.slots)
                matched.extend(leaf.slots)
                node = leaf
                break
            length = _common_length(child.key, token_ids, position)
            if length < len(child.key):
                child = self._split(child, length)
            child.last_access = now
            theirs = slots[position : position + length]
            duplicates.extend(
                mine for mine, cached in zip(theirs, child.slots, strict=True) if mine != cached
            )
            matched.extend(child.slots)
            position += length
            node = child
        if duplicates and self.kv_pool is not None:
            self.kv_pool.free(duplicates)
        self._lock(node)
        return PrefixMatch(tuple(matched), node)

    def release(self, match: PrefixMatch) -> None:
        node = match.handle
        if node is None:
            return
        assert isinstance(node, RadixNode)
        while node is not None:
            if node.lock_count <= 0:
                raise RuntimeError("releasing a prefix-cache node that is not locked")
            node.lock_count -= 1
            if node.lock_count == 0 and node.parent is not None:
                self._evictable += len(node.slots)
            node = node.parent

    def evictable_size(self) -> int:
        return self._evictable

    def total_size(self) -> int:
        return self._total

    def evict(self, num_slots: int) -> int:
        if num_slots <= 0:
            return 0
        heap = [leaf for leaf in self._leaves() if leaf.lock_count == 0]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_slots:
            leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            freed += len(leaf.slots)
            self._total -= len(leaf.slots)
            self._evictable -= len(leaf.slots)
            if self.kv_pool is not None:
                self.kv_pool.free(leaf.slots)
            if parent.parent is not None and not parent.children and parent.lock_count == 0:
                heapq.heappush(heap, parent)
        return freed

    # ----- lookups without side effects --------------------------------------------------------

    def prefix_length(self, token_ids: Sequence[int], extra_key: ExtraKey = None) -> int:
        """Length of the longest cached prefix of ``token_ids`` (no split, no lock, no LRU touch)."""
        node = self._roots.get(extra_key)
        position = 0
        while node is not None and position < len(token_ids):
            child = node.children.get(token_ids[position])
            if child is None:
                break
            length = _common_length(child.key, token_ids, position)
            position += length
            if length < len(child.key):
                break
            node = child
        return position

    def all_slots(self) -> list[int]:
        """Every slot the tree holds (tests: pool accounting)."""
        slots: list[int] = []
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            slots.extend(node.slots)
            stack.extend(node.children.values())
        return slots

    def locked_slots(self) -> int:
        """Slots in locked nodes (tests: ``total_size() == evictable_size() + locked_slots()``)."""
        count = 0
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            if node.lock_count > 0:
                count += len(node.slots)
            stack.extend(node.children.values())
        return count

    # ----- internals ---------------------------------------------------------------------------

    def _root(self, extra_key: ExtraKey) -> RadixNode:
        root = self._roots.get(extra_key)
        if root is None:
            root = self._roots[extra_key] = RadixNode([], [], None, 0)
        return root

    def _walk(
        self, token_ids: Sequence[int], extra_key: ExtraKey, split: bool
    ) -> tuple[RadixNode, list[int]]:
        """The deepest node on the path of ``token_ids`` (an edge split where the match ends
        inside it) and the slots along the path; touches the nodes for LRU."""
        now = next(self._clock)
        node = self._root(extra_key)
        node.last_access = now
        slots: list[int] = []
        position = 0
        while position < len(token_ids):
            child = node.children.get(token_ids[position])
            if child is None:
                break
            length = _common_length(child.key, token_ids, position)
            if length < len(child.key):
                if not split:
                    break
                child = self._split(child, length)
            child.last_access = now
            slots.extend(child.slots)
            position += length
            node = child
        return node, slots

    def _split(self, node: RadixNode, length: int) -> RadixNode:
        """Cut ``node``'s edge after ``length`` tokens; return the new upper node."""
        parent = node.parent
        assert parent is not None and 0 < length < len(node.key)
        upper = RadixNode(node.key[:length], node.slots[:length], parent, node.last_access)
        upper.lock_count = node.lock_count  # the same locks cover both halves
        parent.children[upper.key[0]] = upper
        node.key, node.slots = node.key[length:], node.slots[length:]
        node.parent = upper
        upper.children[node.key[0]] = node
        return upper

    def _lock(self, node: RadixNode) -> None:
        while node.parent is not None:
            if node.lock_count == 0:
                self._evictable -= len(node.slots)
            node.lock_count += 1
            node = node.parent
        node.lock_count += 1  # the root: never evicted, counted for symmetry with release

    def _leaves(self) -> list[RadixNode]:
        leaves: list[RadixNode] = []
        stack = [child for root in self._roots.values() for child in root.children.values()]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                leaves.append(node)
        return leaves
