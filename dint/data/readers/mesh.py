"""Meshes: PLY, OBJ, STL, OFF, sampled on a regular 3D grid as occupancy or signed distance.

What a mesh becomes
-------------------
The mesh is loaded with trimesh (a scene is concatenated into one mesh) and normalised into
the [-1, 1]^3 cube: centred on its bounding box, and scaled so that the longest side of the
bounding box spans [-0.9, 0.9] (`MARGIN`). `extra["normalisation"]` keeps `center` and
`scale`, so `original = normalised / scale + center` maps a reconstruction back.

The grid has R points per axis spanning [-1, 1] end to end, the same coordinates the trainer
uses: x_i = -1 + 2 i / (R - 1). The store array is indexed (Z, Y, X, channel): array axis 0 is
the mesh's z coordinate, axis 1 its y, axis 2 its x, and there is one channel. So
`values[k, j, i, 0]` is the field at mesh point (x_i, y_j, z_k).

- `occupancy` (default): uint8, 1 inside, 0 outside; value_range (0, 1).
- `sdf`: float32 signed distance to the surface, negative inside (the occupancy's inside), in
  the normalised [-1, 1] units (divide by `scale` for the mesh's own units), TRUNCATED: |sdf|
  is clamped at tau = 12 grid cells = 24 / (R - 1) (`truncation()`: 0.094 at R = 256), so
  value_range is (-tau, tau) and `extra["sdf"]["truncation"]` records tau. Within the band
  the distance is the exact point-triangle distance to the closest of the candidate
  triangles: those owning the 4 nearest of a set of surface samples (at most one grid cell
  apart on every triangle), then two steps to a closer edge-adjacent face. It is never below
  the true distance and at most 1/sqrt(3) cell above it (`extra["sdf"]["max_error"]`); in
  checks against brute force it is the true distance to float precision at all but a few
  points per thousand (those off by < 0.01 cell). The band is in cells because an exact
  nearest-surface query costs in proportion to the distance in cells: a band fixed in
  normalised units would make the cost grow as R^4 instead of R^2. Sub-blocks of 8^3 points
  wholly beyond the band cost one query.

Inside or outside
-----------------
Decided by crossing parity along rays, rasterised the way a GPU does: every triangle is
projected onto the grid's ray columns for a ray axis, the columns inside its projection get a
crossing at the interpolated depth, and a point is inside when an odd number of crossings lie
below it on its column. Edge functions are evaluated once per shared edge in a canonical
vertex order with a consistent tie rule, so a ray through a shared edge or vertex counts
exactly one crossing (no double hits, no leaks), and the points are evaluated a tiny fraction
of a cell (`JITTER`) off the grid so that faces lying exactly on grid planes are not ties.

- Watertight meshes (every edge shared by two faces): rays along z only; exact for a closed
  surface.
- Other meshes (holes, open scans such as the Stanford bunny, dragon, buddha): rays along all
  three axes and a majority vote of the three parities. A hole then only flips a point when two
  of its three rays pass through holes, which removes most streaks; what is inside an open
  surface is ill-defined, so `extra["warning"]` says so and `extra["watertight"]` is false.

The grid is a lazy dask array whose blocks are exactly `default_chunks((R, R, R), chunk)`.
Each block is computed on its own from the mesh: its columns' crossings along each ray axis
are rasterised for the whole ray, the crossings before the block give the starting parity
and those inside it toggle it. A block's memory is its own size plus its columns' crossings,
so R = 512 and beyond run in bounded memory; the work parallelises over blocks.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from pathlib import Path

import numpy as np

from dint.core.errors import DintError
from dint.core.files import shown
from dint.core.packages import need
from dint.data.readers.common import ReadOptions, Regions, Source, error_message, lazy_array

EXTENSIONS = (".ply", ".obj", ".stl", ".off")
MARGIN = 0.9  # the longest bounding-box side maps to [-MARGIN, MARGIN]
# Points are classified at grid point + JITTER * cell (per array axis z, y, x): off any plane
# or edge of the grid, so axis-aligned faces on grid planes are not ties.
JITTER = (0.000131, 0.000173, 0.000197)
SAMPLE_SPACING = 1.0  # surface samples for the SDF: at most this many cells apart on a triangle
NEIGHBOURS = 4  # SDF: exact distances to the triangles of this many nearest samples
DESCENT_STEPS = 2  # SDF: then this many steps to a closer edge-adjacent face
TRUNCATION_CELLS = 12  # SDF: |sdf| is clamped at this many grid cells
SUB = 8  # SDF: sub-blocks of SUB^3 points wholly beyond the truncation are skipped


def truncation(resolution: int) -> float:
    """Where the SDF is clamped, in normalised units: 12 grid cells, 24 / (R - 1)."""
    return TRUNCATION_CELLS * 2.0 / (resolution - 1)


# --------------------------------------------------------------------------- loading


def _header_counts(path: Path, kind: str) -> dict[str, int]:
    """Element counts promised by a PLY or OFF header (to catch truncated files)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if kind == "ply":
        end = head.find(b"end_header")
        if not head.startswith(b"ply") or end < 0:
            return {}
        text = head[:end].decode("ascii", "replace")
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"^element\s+(\w+)\s+(\d+)", text, re.M)}
    if kind == "off":
        words = []
        for line in head.decode("ascii", "replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not words and line.upper().endswith("OFF"):
                line = line[3:] if line.upper().startswith("OFF") else ""
            words += line.split()
            if len(words) >= 2:
                break
        try:
            return {"vertex": int(words[0]), "face": int(words[1])}
        except (IndexError, ValueError):
            return {}
    return {}


def _check_stl(path: Path, size: int) -> None:
    with open(path, "rb") as f:
        head = f.read(84)
    if len(head) == 84:
        count = int.from_bytes(head[80:84], "little")
        if 84 + 50 * count == size:
            return  # a well-formed binary STL
    if head.lstrip()[:5].lower() == b"solid":
        return  # ASCII STL: trimesh parses it
    expected = f"{84 + 50 * int.from_bytes(head[80:84], 'little')} bytes" if len(head) == 84 else "at least 84 bytes"
    raise DintError(
        f"{path}: not a valid STL (neither ASCII nor a binary STL: a binary STL of this "
        f"header would be {expected}, the file has {size}); truncated?"
    )


def load_mesh(path: Path):
    """Load a triangle mesh with trimesh (scenes concatenated); DintError naming `path` on anything bad."""
    trimesh = need("trimesh", "trimesh", "reading meshes")

    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DintError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise DintError(f"{path}: the file is empty")
    if kind == "stl":
        _check_stl(path, size)
    logger = logging.getLogger("trimesh")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # trimesh logs warnings (missing materials...) to stderr
    try:
        raw = trimesh.load(str(path), file_type=kind, force="mesh", process=False)
        vertices = np.asarray(raw.vertices, dtype=np.float64)
        faces = np.asarray(raw.faces, dtype=np.int64).reshape(-1, 3)
    except DintError:
        raise
    except Exception as e:  # trimesh raises many unrelated types for a bad file
        raise DintError(error_message(path, f"not a readable {kind.upper()} mesh", e)) from None
    finally:
        logger.setLevel(level)
    counts = _header_counts(path, kind)
    if counts.get("face", 0) > len(faces):
        raise DintError(
            f"{path}: truncated or corrupt: the header promises {counts['face']} faces, {len(faces)} were read"
        )
    if len(faces) == 0:
        points = counts.get("vertex", len(vertices))
        what = f"{points} points and no faces (a point cloud?)" if points else "no vertices and no faces"
        raise DintError(f"{path}: holds {what}; a mesh with triangles is needed")
    if "vertex" in counts and len(vertices) != counts["vertex"]:
        raise DintError(
            f"{path}: truncated or corrupt: the header promises {counts['vertex']} vertices, {len(vertices)} were read"
        )
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DintError(
            f"{path}: faces refer to vertices that do not exist (indices up to {faces.max()}, {len(vertices)} vertices)"
        )
    used = np.unique(faces)
    if not np.isfinite(vertices[used]).all():
        raise DintError(
            f"{path}: {int((~np.isfinite(vertices[used])).any(axis=1).sum())} vertices of its faces are NaN or Inf"
        )
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)  # merges duplicate vertices (STL)
    extents = mesh.bounds[1] - mesh.bounds[0]
    if not extents.max() > 0:
        raise DintError(f"{path}: all vertices of the mesh are at one point")
    return mesh


def normalisation(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Center and scale with `normalised = (v - center) * scale` in [-MARGIN, MARGIN] (longest side)."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    center = (lo + hi) / 2
    return center, 2 * MARGIN / float((hi - lo).max())


# --------------------------------------------------------------------------- rasterising


def training_axis_coordinates(resolution: int) -> np.ndarray:
    """The trainer's coordinates of one axis: -1 + 2 i / (R - 1)."""
    return -1.0 + 2.0 * np.arange(resolution) / (resolution - 1)


class _RayAxis:
    """Triangles projected along one array axis (0: z, 1: y, 2: x), ready to rasterise per column tile.

    Columns are indexed (a, b) over the two other array axes in order. Each triangle carries its
    three edge functions in a canonical orientation (lower vertex index first) so that the two
    triangles of a shared edge evaluate it bit for bit the same way, with opposite signs.
    """

    def __init__(self, points: np.ndarray, faces: np.ndarray, axis: int, resolution: int, tile: int):
        self.axis = axis
        others = [d for d in range(3) if d != axis]
        self.others = others
        n = resolution
        self.step = 2.0 / (n - 1)
        self.resolution = n
        jitter = np.asarray(JITTER) * self.step
        self.ray_jitter = jitter[axis]
        # Ray positions: column (ia, ib) sits at grid + jitter on the two other axes.
        ua = points[:, others[0]] - jitter[others[0]]
        ub = points[:, others[1]] - jitter[others[1]]
        tri_a, tri_b, tri_r = ua[faces], ub[faces], points[:, axis][faces]  # (F, 3) each
        # Index ranges of the columns each triangle's bounding box covers (inclusive), widened
        # by a hair so that rounding never drops a column on the box's edge (the edge
        # functions decide those exactly).
        hair = 1e-7
        lo_a = np.ceil((tri_a.min(axis=1) + 1) / self.step - hair).astype(np.int64)
        hi_a = np.floor((tri_a.max(axis=1) + 1) / self.step + hair).astype(np.int64)
        lo_b = np.ceil((tri_b.min(axis=1) + 1) / self.step - hair).astype(np.int64)
        hi_b = np.floor((tri_b.max(axis=1) + 1) / self.step + hair).astype(np.int64)
        lo_a, lo_b = np.maximum(lo_a, 0), np.maximum(lo_b, 0)
        hi_a, hi_b = np.minimum(hi_a, n - 1), np.minimum(hi_b, n - 1)
        # Twice the signed projected area; triangles seen edge-on never cross a ray.
        area = (tri_a[:, 1] - tri_a[:, 0]) * (tri_b[:, 2] - tri_b[:, 0]) - (tri_b[:, 1] - tri_b[:, 0]) * (
            tri_a[:, 2] - tri_a[:, 0]
        )
        keep = (lo_a <= hi_a) & (lo_b <= hi_b) & (area != 0)
        ids = np.flatnonzero(keep)
        self.lo_a, self.hi_a, self.lo_b, self.hi_b = lo_a[ids], hi_a[ids], lo_b[ids], hi_b[ids]
        self.tri_r = tri_r[ids]
        # Edge k runs between corners (k+1)%3 and (k+2)%3, oriented from the lower vertex index;
        # `side` is the sign of the edge function at the opposite corner (the triangle's side).
        f, tri_a, tri_b = faces[ids], tri_a[ids], tri_b[ids]
        rows = np.arange(len(ids))
        self.edges = []
        for k in range(3):
            i, j = (k + 1) % 3, (k + 2) % 3
            swap = f[:, i] > f[:, j]
            p, q = np.where(swap, j, i), np.where(swap, i, j)
            pa, pb = tri_a[rows, p], tri_b[rows, p]
            qa, qb = tri_a[rows, q], tri_b[rows, q]
            opposite_a, opposite_b = tri_a[:, k], tri_b[:, k]
            side = np.sign((qa - pa) * (opposite_b - pb) - (qb - pb) * (opposite_a - pa))
            # A column exactly on the edge line counts as moved by (eps, eps^2) off it: the sign
            # of the edge function there, the same rule for every edge (a consistent tie rule).
            da, db = qa - pa, qb - pb
            tie = np.sign(np.where(db != 0, -db, da))
            self.edges.append((pa, pb, da, db, side, tie))
        # Bin the triangles by the column tiles their bounding boxes touch (CSR per tile).
        self.tile = tile
        self.tiles_per_side = -(-n // tile)
        ta0, ta1, tb0, tb1 = self.lo_a // tile, self.hi_a // tile, self.lo_b // tile, self.hi_b // tile
        na, nb = ta1 - ta0 + 1, tb1 - tb0 + 1
        count = na * nb
        owner = np.repeat(np.arange(len(ids)), count)
        offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        tile_a = ta0[owner] + offset // nb[owner]
        tile_b = tb0[owner] + offset % nb[owner]
        key = tile_a * self.tiles_per_side + tile_b
        order = np.argsort(key, kind="stable")
        self.tile_members = owner[order]
        self.tile_starts = np.searchsorted(key[order], np.arange(self.tiles_per_side**2 + 1))

    def members(self, a0: int, a1: int, b0: int, b1: int) -> np.ndarray:
        """Triangles whose column boxes may meet columns [a0, a1) x [b0, b1)."""
        t = self.tile
        found = []
        for ta in range(a0 // t, (a1 - 1) // t + 1):
            for tb in range(b0 // t, (b1 - 1) // t + 1):
                key = ta * self.tiles_per_side + tb
                found.append(self.tile_members[self.tile_starts[key] : self.tile_starts[key + 1]])
        ids = np.concatenate(found) if found else np.zeros(0, np.int64)
        return np.unique(ids) if len(found) > 1 else ids

    def crossings(self, a0: int, a1: int, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray]:
        """(column, depth) of every ray crossing on columns [a0, a1) x [b0, b1); column = la * (b1-b0) + lb."""
        ids = self.members(a0, a1, b0, b1)
        lo_a, hi_a = np.maximum(self.lo_a[ids], a0), np.minimum(self.hi_a[ids], a1 - 1)
        lo_b, hi_b = np.maximum(self.lo_b[ids], b0), np.minimum(self.hi_b[ids], b1 - 1)
        na, nb = hi_a - lo_a + 1, hi_b - lo_b + 1
        ok = (na > 0) & (nb > 0)
        ids, lo_a, lo_b, na, nb = ids[ok], lo_a[ok], lo_b[ok], na[ok], nb[ok]
        count = na * nb
        owner = np.repeat(np.arange(len(ids)), count)
        offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        ia = lo_a[owner] + offset // nb[owner]
        ib = lo_b[owner] + offset % nb[owner]
        tri = ids[owner]
        ua = -1.0 + ia * self.step
        ub = -1.0 + ib * self.step
        inside = np.ones(len(tri), dtype=bool)
        weights = []
        for pa, pb, da, db, side, tie in self.edges:
            e = da[tri] * (ub - pb[tri]) - db[tri] * (ua - pa[tri])
            # The column is on the triangle's side of this edge. A shared edge is evaluated bit
            # for bit alike by both its triangles, so exactly one of them claims the column.
            inside &= np.where(e != 0, np.sign(e), tie[tri]) * side[tri] > 0
            weights.append(np.abs(e))
        w = np.stack(weights, axis=1)[inside]
        tri, ia, ib = tri[inside], ia[inside], ib[inside]
        total = w.sum(axis=1)
        depth = (w * self.tri_r[tri]).sum(axis=1) / np.where(total > 0, total, 1.0)
        column = (ia - a0) * (b1 - b0) + (ib - b0)
        return column, depth

    def parity(self, r0: int, r1: int, a0: int, a1: int, b0: int, b1: int) -> np.ndarray:
        """Crossing parity (1: odd, inside) of points [r0, r1) on columns [a0, a1) x [b0, b1), shaped (r, a, b)."""
        column, depth = self.crossings(a0, a1, b0, b1)
        # A crossing at depth t toggles samples i with t < x_i + jitter: i >= first.
        first = np.floor((depth - self.ray_jitter + 1) / self.step).astype(np.int64) + 1
        first = np.maximum(first, 0)
        keep = first < r1
        local = np.maximum(first[keep] - r0, 0)
        columns = (a1 - a0) * (b1 - b0)
        toggles = np.bincount(local * columns + column[keep], minlength=(r1 - r0) * columns)
        toggles = toggles.reshape(r1 - r0, a1 - a0, b1 - b0)
        return (np.cumsum(toggles, axis=0, dtype=np.int32) & 1).astype(np.uint8)


# --------------------------------------------------------------------------- distances


def _segment_distance(p, a, b):
    ab = b - a
    length = np.einsum("ij,ij->i", ab, ab)
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.where(length > 0, length, 1.0), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def point_triangle_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from points p (N, 3) to triangles (a, b, c) (N, 3 each)."""
    ab, ac, ap = b - a, c - a, p - a
    normal = np.cross(ab, ac)
    area2 = np.einsum("ij,ij->i", normal, normal)
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    # Slivers (sin of the corner angle below 1e-6) are measured by their edges only.
    flat = area2 > 1e-12 * d00 * d11
    with np.errstate(divide="ignore", invalid="ignore"):
        # Barycentric coordinates of the projection of p onto the triangle's plane.
        d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
        denom = d00 * d11 - d01 * d01
        v = (d11 * d20 - d01 * d21) / denom
        w = (d00 * d21 - d01 * d20) / denom
        inside = flat & (v >= 0) & (w >= 0) & (v + w <= 1)
        plane = np.abs(np.einsum("ij,ij->i", ap, normal)) / np.sqrt(area2)
    edges = np.minimum(np.minimum(_segment_distance(p, a, b), _segment_distance(p, b, c)), _segment_distance(p, a, c))
    return np.where(inside, plane, edges)


def surface_samples(points: np.ndarray, faces: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on every triangle on a barycentric lattice at most `spacing` apart along each edge; with their
    triangle."""
    tri = points[faces]  # (F, 3, 3)
    longest = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2), axis=1)
    splits = np.maximum(1, np.ceil(longest / spacing).astype(np.int64))
    all_points, all_owners = [], []
    for n in np.unique(splits):
        ids = np.flatnonzero(splits == n)
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        u, v = i[keep] / n, j[keep] / n  # lattice weights of corners 1 and 2
        weights = np.stack([1 - u - v, u, v], axis=1)  # (L, 3)
        for start in range(0, len(ids), max(1, 2_000_000 // len(weights))):
            part = ids[start : start + max(1, 2_000_000 // len(weights))]
            all_points.append(np.einsum("lk,fkd->fld", weights, tri[part]).reshape(-1, 3))
            all_owners.append(np.repeat(part, len(weights)))
    return np.concatenate(all_points), np.concatenate(all_owners)


def face_neighbours(faces: np.ndarray) -> np.ndarray:
    """(F, 3): for each face, faces sharing an edge with it (up to 3; padded with the face itself)."""
    count = len(faces)
    edges = np.sort(faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), axis=1)
    owner = np.repeat(np.arange(count), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    same = (edges[1:] == edges[:-1]).all(axis=1)
    pairs = np.concatenate(
        [np.stack([owner[:-1][same], owner[1:][same]], 1), np.stack([owner[1:][same], owner[:-1][same]], 1)]
    )
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    result = np.repeat(np.arange(count)[:, None], 3, axis=1)
    if len(pairs):
        start = np.searchsorted(pairs[:, 0], pairs[:, 0], side="left")
        rank = np.arange(len(pairs)) - start
        keep = rank < 3
        result[pairs[keep, 0], rank[keep]] = pairs[keep, 1]
    return result


# --------------------------------------------------------------------------- the grid


class MeshGrid:
    """A mesh (already normalised) sampled on the R^3 grid, one block at a time."""

    def __init__(
        self,
        points: np.ndarray,
        faces: np.ndarray,
        resolution: int,
        field: str,
        chunks: tuple[int, ...],
        axes: tuple[int, ...],
    ):
        self.points = np.ascontiguousarray(points[:, ::-1], dtype=np.float64)  # array order (z, y, x)
        self.faces = np.asarray(faces, dtype=np.int64)
        self.resolution = resolution
        self.field = field
        self.chunks = chunks
        self.axes = axes
        self.coords = training_axis_coordinates(resolution)
        self._rays: dict[int, _RayAxis] = {}
        self._tree = None
        self._lock = threading.Lock()

    def ray_axis(self, axis: int) -> _RayAxis:
        with self._lock:  # built once, on first use, by whichever worker gets there first
            if axis not in self._rays:
                # Column tiles are the block's extent on the two other axes (chunks are cubes here).
                others = [d for d in range(3) if d != axis]
                self._rays[axis] = _RayAxis(self.points, self.faces, axis, self.resolution, self.chunks[others[0]])
            return self._rays[axis]

    def occupancy(self, z: slice, y: slice, x: slice) -> np.ndarray:
        bounds = [(z.start, z.stop), (y.start, y.stop), (x.start, x.stop)]
        votes = None
        for axis in self.axes:
            (r0, r1), (a0, a1), (b0, b1) = bounds[axis], *[bounds[d] for d in range(3) if d != axis]
            parity = self.ray_axis(axis).parity(r0, r1, a0, a1, b0, b1)  # (r, a, b)
            order = {0: (0, 1, 2), 1: (1, 0, 2), 2: (1, 2, 0)}[axis]  # back to (z, y, x)
            parity = parity.transpose(order)
            votes = parity if votes is None else votes + parity
        return (2 * votes > len(self.axes)).astype(np.uint8)

    def truncation(self) -> float:
        return truncation(self.resolution)

    def tree(self):
        with self._lock:
            if self._tree is None:
                from scipy.spatial import cKDTree

                spacing = SAMPLE_SPACING * 2.0 / (self.resolution - 1)
                samples, owners = surface_samples(self.points, self.faces, spacing)
                # Shared vertices and edges are sampled by every triangle around them: keep one.
                samples, first = np.unique(samples, axis=0, return_index=True)
                # Sliding-midpoint trees answer queries off a surface several times faster.
                self.neighbours = face_neighbours(self.faces)
                self._tree = (cKDTree(samples, leafsize=16, balanced_tree=False, compact_nodes=False), owners[first])
            return self._tree

    def _improve(self, p, found, faces, best, best_face) -> None:
        """Where face `faces[i]` is closer to point p[found[i]] than best, take it."""
        tri = self.faces[faces]
        d = point_triangle_distance(p[found], self.points[tri[:, 0]], self.points[tri[:, 1]], self.points[tri[:, 2]])
        closer = d < best[found]
        best[found[closer]] = d[closer]
        best_face[found[closer]] = faces[closer]

    def distance(self, z: slice, y: slice, x: slice) -> np.ndarray:
        """Unsigned distance of the block's points to the surface, clamped at the truncation."""
        tree, owners = self.tree()
        tau = self.truncation()
        slack = SAMPLE_SPACING * 2.0 / (self.resolution - 1) / math.sqrt(3)  # sample covering radius
        c = self.coords
        shape = (z.stop - z.start, y.stop - y.start, x.stop - x.start)
        # Sub-blocks of SUB^3 points whose centre is farther than tau + slack + their half
        # diagonal from every sample lie wholly beyond the truncation: one query each, skipped.
        starts = [np.arange(s.start, s.stop, SUB) for s in (z, y, x)]
        ends = [np.minimum(first + SUB, s.stop) - 1 for first, s in zip(starts, (z, y, x))]
        centres = [(c[first] + c[last]) / 2 for first, last in zip(starts, ends)]
        radius = math.sqrt(3) * (SUB - 1) / (self.resolution - 1)  # half diagonal of a full sub-block
        sub = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, 3)
        near, _ = tree.query(sub, distance_upper_bound=tau + slack + radius)
        near = np.isfinite(near).reshape(*(len(first) for first in starts))
        if not near.any():
            return np.full(shape, tau)
        # The points of the sub-blocks that may hold some of the band.
        local = [np.arange(n) // SUB for n in shape]
        keep = near[np.ix_(*local)].reshape(-1)
        p = np.stack(np.meshgrid(c[z], c[y], c[x], indexing="ij"), axis=-1).reshape(-1, 3)[keep]
        # Every point within tau of the surface has its nearest sample within tau + slack.
        k = min(NEIGHBOURS, tree.n)
        _, nearest = tree.query(p, k=k, distance_upper_bound=tau + slack)
        nearest = nearest.reshape(len(p), k)
        best = np.full(len(p), tau)
        best_face = np.full(len(p), -1)
        for column in range(k):
            found = np.flatnonzero(nearest[:, column] < tree.n)
            if not len(found):
                break
            self._improve(p, found, owners[nearest[found, column]], best, best_face)
        # Then walk to neighbouring faces while that gets closer (helps far from the surface,
        # where the nearest sample's triangle may be a neighbour of the nearest triangle).
        for _ in range(DESCENT_STEPS):
            found = np.flatnonzero(best_face >= 0)
            start = best_face[found]
            for column in range(3):
                self._improve(p, found, self.neighbours[start, column], best, best_face)
        result = np.full(keep.shape, tau)
        result[keep] = best
        return result.reshape(shape)

    def block(self, index: tuple[slice, ...]) -> np.ndarray:
        """The field over the box `index` (z, y, x[, channel] slices), channels last."""
        z, y, x = index[:3]
        inside = self.occupancy(z, y, x)
        if self.field == "occupancy":
            return inside[..., None]
        distance = self.distance(z, y, x)
        return np.where(inside == 1, -distance, distance).astype(np.float32)[..., None]

    def to_dask(self, path: Path):
        """The grid as a lazy array, read block by block like any source (dint.data.readers.common.
        lazy_array): laying it out costs nothing per block, so a grid too large for the disk is
        refused before any work on it."""
        r = self.resolution
        dtype = np.uint8 if self.field == "occupancy" else np.float32
        return lazy_array(path, Regions(path, (r, r, r, 1), dtype, self.block), (*self.chunks, 1), f"mesh-{self.field}")


def read(path: Path, options: ReadOptions) -> Source:
    from dint.data.store import check_chunk_count, default_chunks

    path = Path(path)
    if options.field not in ("occupancy", "sdf"):
        raise DintError(f"--field {options.field}: must be occupancy or sdf")
    if options.resolution < 2:
        raise DintError(f"--resolution {options.resolution}: must be at least 2")
    grid_shape = (options.resolution,) * 3
    check_chunk_count(grid_shape, default_chunks(grid_shape, options.chunk), path)  # before the mesh is even read
    mesh = load_mesh(path)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    used = vertices[np.unique(faces)]  # vertices that no face uses do not count
    center, scale = normalisation(used)
    watertight = bool(mesh.is_watertight)
    r = options.resolution
    extent = (used.max(axis=0) - used.min(axis=0)) * scale  # in [-1, 1] grid units
    if not mesh.area > 0 or extent.min() < 2.0 / (r - 1):
        raise DintError(
            f"{shown(path)}: the mesh is flat or degenerate (area {float(mesh.area):.3g}, thinnest side "
            f"{float(extent.min()) * (r - 1) / 2:.3g} grid cells at --resolution {r}): it encloses no "
            "grid point, so the field would be empty"
        )
    chunks = default_chunks((r, r, r), options.chunk)
    axes = (0,) if watertight else (0, 1, 2)
    grid = MeshGrid((vertices - center) * scale, faces, r, options.field, chunks, axes)
    extra = {
        "field": options.field,
        "resolution": r,
        "axes": "z, y, x (array axis 0 is the mesh's z, axis 2 its x)",
        "grid": "x_i = -1 + 2 i / (R - 1) per axis",
        "normalisation": {
            "center": [float(v) for v in center],
            "scale": float(scale),
            "maps": f"normalised = (original - center) * scale; the longest side spans [-{MARGIN}, {MARGIN}]",
        },
        "watertight": watertight,
        "inside_rule": "crossing parity along z" if watertight else "majority vote of crossing parity along z, y and x",
        "vertices": int(len(vertices)),
        "faces": int(len(faces)),
        "bounds": [[float(v) for v in used.min(axis=0)], [float(v) for v in used.max(axis=0)]],  # original units
    }
    value_range = (0.0, 1.0)
    if options.field == "sdf":
        tau = truncation(r)
        value_range = (-tau, tau)
        extra["sdf"] = {
            "units": "normalised [-1, 1] coordinates (divide by normalisation.scale for the mesh's units)",
            "sign": "negative inside (the occupancy's inside)",
            "truncation": tau,
            "truncated": f"|sdf| is clamped at {tau:.6g} ({TRUNCATION_CELLS} grid cells): the distance "
            f"within the band, {tau:.6g} beyond it",
            "max_error": SAMPLE_SPACING * 2.0 / (r - 1) / math.sqrt(3),  # above the true distance, never below
        }
    if not watertight:
        extra["warning"] = (
            "the mesh is not watertight (it has holes or open edges): inside is decided by a "
            "majority vote of ray parity along three axes and may be wrong near holes"
        )
    # The grid is finite by construction and its range is known: read_source's NaN scan (a full
    # pass over the float values) would double the cost of an SDF.
    return Source(values=grid.to_dask(path), modality="shape", value_range=value_range, extra=extra, finite=True)
