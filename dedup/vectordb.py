"""Beyond one machine: the same index / query / duplicate search through a Qdrant vector database.

Why Qdrant (over Milvus): its official Python client (``qdrant-client``) has an **embedded local mode**
(``QdrantClient(path=...)``, in-process, no server, nothing to download) with the same API as a server or a
distributed cluster (``QdrantClient(url=..., api_key=...)``: sharding and replication across nodes, HNSW with
scalar / binary quantisation on the server); the tests run the embedded mode, and pointing the same commands at a
cluster is a change of location. Milvus Lite also embeds, but as a native server binary per platform.

Vectors: floats are stored with the cosine distance; hashes as their unpacked bits (0/1 floats) with the
Manhattan distance, which on 0/1 vectors is exactly the Hamming distance. Points are numbered by row, with the
image path as payload, so appending continues the numbering.

Location: a folder (embedded mode) or an ``http(s)://`` URL (server / cluster; ``QDRANT_API_KEY`` is read from the
environment when set).
"""
import os

import numpy as np

from helpers.log import get_logger

logger = get_logger(__name__)


def client_for(location):
    """A ``QdrantClient`` for a folder (embedded) or a URL (server / cluster)."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise ValueError("the Qdrant backend needs qdrant-client (pip install qdrant-client)") from None
    location = str(location)
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location, api_key=os.environ.get("QDRANT_API_KEY"))
    os.makedirs(location, exist_ok=True)
    return QdrantClient(path=location)


def _vectors(features, binary):
    if binary:
        return np.unpackbits(np.asarray(features), axis=1).astype(np.float32)
    return np.asarray(features, dtype=np.float32)


class QdrantIndex:
    """One Qdrant collection holding a collection's features (see the module docstring)."""

    def __init__(self, location, collection, binary, dim):
        self.client = client_for(location)
        self.location, self.collection = str(location), str(collection)
        self.binary, self.dim = bool(binary), int(dim)

    def create(self, overwrite=False):
        from qdrant_client import models

        if self.client.collection_exists(self.collection):
            if not overwrite:
                raise ValueError(f"Qdrant collection {self.collection!r} exists at {self.location}; use --append "
                                 "or --force")
            self.client.delete_collection(self.collection)
        distance = models.Distance.MANHATTAN if self.binary else models.Distance.COSINE
        self.client.create_collection(self.collection,
                                      vectors_config=models.VectorParams(size=self.dim, distance=distance))

    @property
    def count(self):
        return int(self.client.count(self.collection, exact=True).count)

    def add(self, features, names, batch_size=1024):
        """Append rows (numbered after the ones already there)."""
        from qdrant_client import models

        start = self.count
        vectors = _vectors(features, self.binary)
        for offset in range(0, len(vectors), batch_size):
            block = vectors[offset:offset + batch_size]
            points = [models.PointStruct(id=start + offset + i, vector=row.tolist(),
                                         payload={"path": str(names[offset + i])})
                      for i, row in enumerate(block)]
            self.client.upsert(self.collection, points=points, wait=True)
        return len(vectors)

    def _query(self, vector, k, threshold=None):
        score_threshold = None
        if threshold is not None:
            # a hair looser than the threshold (Qdrant's comparison at the boundary); callers keep d <= threshold
            score_threshold = float(threshold) + 0.5 if self.binary else float(1.0 - threshold) - 1e-6
        response = self.client.query_points(self.collection, query=vector.tolist(), limit=int(k),
                                            score_threshold=score_threshold, with_payload=True)
        hits = response.points
        ids = np.array([hit.id for hit in hits], dtype=np.int64)
        scores = np.array([hit.score for hit in hits], dtype=np.float64)
        distances = scores if self.binary else 1.0 - scores
        return distances, ids, [hit.payload.get("path") for hit in hits]

    def search(self, features, k):
        """``(distances [nq, k], ids [nq, k])``, lower = closer; missing: ``inf`` / ``-1``."""
        vectors = _vectors(features, self.binary)
        distances = np.full((len(vectors), k), np.inf)
        ids = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, vector in enumerate(vectors):
            d, i, _ = self._query(vector, k)
            distances[row, :len(d)], ids[row, :len(i)] = d, i
        return distances, ids

    def names(self):
        """Image paths by row number."""
        out = {}
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=True,
                                                with_vectors=False)
            out.update({int(p.id): p.payload.get("path") for p in points})
            if offset is None:
                break
        return [out[i] for i in range(len(out))]

    def range_pairs(self, features, threshold, limit=100, query_offset=0):
        """Every (query row, stored row) pair within ``threshold`` (at most ``limit`` per query)."""
        vectors = _vectors(features, self.binary)
        qs, ids, ds = [], [], []
        for row, vector in enumerate(vectors):
            d, i, _ = self._query(vector, limit, threshold)
            keep = d <= threshold + 1e-6
            qs.append(np.full(int(keep.sum()), row + query_offset, dtype=np.int64))
            ids.append(i[keep])
            ds.append(d[keep])
        return np.concatenate(qs), np.concatenate(ids), np.concatenate(ds)

    def close(self):
        self.client.close()


def qdrant_self_pairs(features, threshold, binary, dim, location, collection="find_duplicates", limit=100):
    """:func:`dedup.pairs.self_pairs` through Qdrant: the collection is (re)loaded, each row queried."""
    from .pairs import _sorted

    index = QdrantIndex(location, collection, binary, dim)
    index.create(overwrite=True)
    index.add(features, [str(i) for i in range(len(features))])
    q, i, d = index.range_pairs(features, threshold, limit=limit)
    index.close()
    keep = q < i
    return _sorted(q[keep], i[keep], d[keep])


def qdrant_cross_pairs(queries, reference, threshold, binary, dim, location, collection="find_duplicates_ref",
                       limit=100):
    from .pairs import _sorted

    index = QdrantIndex(location, collection, binary, dim)
    index.create(overwrite=True)
    index.add(reference, [str(i) for i in range(len(reference))])
    q, i, d = index.range_pairs(queries, threshold, limit=limit)
    index.close()
    return _sorted(q, i, d)
