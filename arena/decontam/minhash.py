"""Stage 2: MinHash LSH near-duplicates (datasketch), for light edits that break long exact n-grams.

Documents and items are shingled into word 3-grams; LSH finds items whose estimated Jaccard similarity with
a document is likely above ``threshold``, and the estimate itself is the score.
"""

from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from arena.decontam.text import ngrams

SHINGLE_SIZE = 3
SEED = 1


def _minhash(tokens: list[str], num_perm: int) -> MinHash | None:
    size = min(SHINGLE_SIZE, len(tokens))
    if size == 0:
        return None
    sketch = MinHash(num_perm=num_perm, seed=SEED)
    sketch.update_batch([s.encode("utf-8") for s in set(ngrams(tokens, size))])
    return sketch


class MinHashIndex:
    """An LSH index over the benchmark items' MinHash sketches."""

    def __init__(self, item_tokens: list[list[str]], threshold: float = 0.5, num_perm: int = 128):
        if not 0.0 < threshold < 1.0:
            raise ValueError("MinHash threshold must be between 0 and 1")
        self.threshold = threshold
        self.num_perm = num_perm
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._sketches: dict[int, MinHash] = {}
        for item, toks in enumerate(item_tokens):
            sketch = _minhash(toks, num_perm)
            if sketch is not None:
                self._sketches[item] = sketch
                self._lsh.insert(item, sketch)

    def match(self, doc_tokens: list[str]) -> dict[int, float]:
        """Items whose estimated Jaccard similarity with the document reaches the threshold: item -> estimate."""
        sketch = _minhash(doc_tokens, self.num_perm)
        if sketch is None:
            return {}
        found: dict[int, float] = {}
        for item in self._lsh.query(sketch):
            similarity = sketch.jaccard(self._sketches[item])
            if similarity >= self.threshold:
                found[item] = similarity
        return found
