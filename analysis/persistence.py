"""Level-set topology on a triangulated sphere: superlevel persistence without the chart border.

The chart signature (``analysis.topology``) sees the sphere through the (θ, φ) rectangle, whose
pole edges φ = ±90° are single points of the sphere: a peak on the border or at a pole shows up
as open lines, and one curve through a pole as two.
Here the map lives on a mesh (the hemisphere grid with each pole merged into one vertex, or an
icosphere for maps defined on the whole sphere) and the superlevel sets {f >= level} are counted
as vertex-induced subcomplexes:

* ``n_components`` (b0) and 0-dimensional persistence (union-find over vertices by descending
  value: a component is born at a maximum and dies at the saddle where it merges into an older one);
* ``n_loop``: closed level curves inside the domain = components that avoid the mesh boundary
  plus the holes of all components (holes = b0 - χ, since proper subsets of the sphere are planar);
* ``n_boundary``: components that reach the mesh boundary (the great circle θ = ±90° of a
  hemisphere grid; an icosphere has none).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from analysis import AnalysisError
from analysis.tuning import grid_axes, sphere_points


@dataclass(frozen=True)
class SphereMesh:
    """Vertices on the unit sphere, triangles, boundary flags and, for grid meshes, which vertex
    each grid point became (``grid_vertex[i, j]``)."""

    vertices: np.ndarray  # (V, 3)
    triangles: np.ndarray  # (T, 3)
    boundary: np.ndarray  # (V,) bool
    grid_vertex: np.ndarray | None = None  # (n_theta, n_phi) int

    @property
    def edges(self) -> np.ndarray:
        """(E, 2) unique undirected edges, smaller vertex first."""
        e = np.sort(self.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1).astype(np.int64)
        n = len(self.vertices)
        code = np.unique(e[:, 0] * n + e[:, 1])
        return np.column_stack([code // n, code % n])

    def grid_to_vertices(self, values) -> np.ndarray:
        """Vertex values from a grid map (a merged pole vertex takes its column's mean)."""
        if self.grid_vertex is None:
            raise AnalysisError("this mesh was not built from a grid; pass vertex values directly")
        values = np.asarray(values, dtype=float)
        if values.shape != self.grid_vertex.shape:
            raise AnalysisError(f"values must have the grid's shape {self.grid_vertex.shape}, got {values.shape}")
        n = len(self.vertices)
        total = np.bincount(self.grid_vertex.ravel(), values.ravel(), minlength=n)
        return total / np.bincount(self.grid_vertex.ravel(), minlength=n)


def grid_mesh(theta, phi) -> SphereMesh:
    """Triangulate a (θ, φ) grid (radians) on the sphere: split every cell in two and merge each
    pole row φ = ±π/2 into one vertex. Boundary = the θ edges, and the φ edges that are not poles."""
    theta, phi = grid_axes(theta, phi, 2)
    nt, nphi = theta.size, phi.size
    pole = np.isclose(np.abs(phi), np.pi / 2)
    index = np.arange(nt * nphi).reshape(nt, nphi)
    index[:, pole] = index[0, pole]  # every θ of a pole column is the same point
    used, grid_vertex = np.unique(index, return_inverse=True)
    grid_vertex = grid_vertex.reshape(nt, nphi)
    vertices = sphere_points(theta[:, None], phi[None, :]).reshape(-1, 3)[used]
    a, b = grid_vertex[:-1, :-1].ravel(), grid_vertex[1:, :-1].ravel()
    c, d = grid_vertex[:-1, 1:].ravel(), grid_vertex[1:, 1:].ravel()
    triangles = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])
    triangles = triangles[(triangles[:, 0] != triangles[:, 1]) & (triangles[:, 1] != triangles[:, 2])
                          & (triangles[:, 0] != triangles[:, 2])]
    edge = np.zeros((nt, nphi), dtype=bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] |= ~pole[[0, -1]]
    boundary = np.zeros(len(vertices), dtype=bool)
    boundary[grid_vertex[edge]] = True
    return SphereMesh(vertices, triangles, boundary, grid_vertex)


def icosphere(subdivisions: int = 4) -> SphereMesh:
    """A closed sphere mesh: an icosahedron with each triangle split in four ``subdivisions`` times."""
    if not 0 <= subdivisions <= 7:
        raise AnalysisError(f"subdivisions must be in 0..7, got {subdivisions}")
    g = (1 + 5 ** 0.5) / 2
    verts = [(-1, g, 0), (1, g, 0), (-1, -g, 0), (1, -g, 0), (0, -1, g), (0, 1, g),
             (0, -1, -g), (0, 1, -g), (g, 0, -1), (g, 0, 1), (-g, 0, -1), (-g, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    vertices = [np.array(v, float) / np.linalg.norm(v) for v in verts]
    faces = np.array(faces)
    for _ in range(subdivisions):
        midpoint = {}

        def mid(i, j):
            key = (min(i, j), max(i, j))
            if key not in midpoint:
                m = vertices[i] + vertices[j]
                vertices.append(m / np.linalg.norm(m))
                midpoint[key] = len(vertices) - 1
            return midpoint[key]

        new = []
        for i, j, k in faces:
            a, b, c = mid(i, j), mid(j, k), mid(k, i)
            new += [(i, a, c), (j, b, a), (k, c, b), (a, b, c)]
        faces = np.array(new)
    vertices = np.array(vertices)
    return SphereMesh(vertices, faces, np.zeros(len(vertices), dtype=bool))


@dataclass(frozen=True)
class Persistence:
    """0-dimensional superlevel persistence pairs, most persistent first. The global maximum's
    component never dies: its death is -inf."""

    births: np.ndarray
    deaths: np.ndarray
    birth_vertex: np.ndarray
    death_vertex: np.ndarray  # -1 for the essential pair

    @property
    def persistence(self) -> np.ndarray:
        return self.births - self.deaths

    def n_peaks(self, min_persistence: float = 0.0) -> int:
        """Maxima whose component lives longer than ``min_persistence`` (in map units)."""
        return int(np.sum(self.persistence > min_persistence))

    def to_dict(self) -> dict:
        finite = np.where(np.isfinite(self.deaths), self.deaths, None)
        return {"births": self.births.tolist(), "deaths": finite.tolist(),
                "birth_vertex": self.birth_vertex.tolist(), "death_vertex": self.death_vertex.tolist()}


def _check(vertex_values, mesh: SphereMesh) -> np.ndarray:
    values = np.asarray(vertex_values, dtype=float)
    if values.shape != (len(mesh.vertices),) or not np.all(np.isfinite(values)):
        raise AnalysisError(f"vertex_values must be {len(mesh.vertices)} finite numbers, one per vertex")
    return values


def superlevel_persistence(vertex_values, mesh: SphereMesh) -> Persistence:
    """Union-find over the edges by descending lower endpoint (a vertex enters at its value, an
    edge at the smaller of its two); the younger component dies at a merge (elder rule).
    Zero-persistence pairs are dropped."""
    values = _check(vertex_values, mesh)
    edges = mesh.edges
    edge_value = values[edges].min(axis=1)
    order = np.lexsort((np.minimum(*edges.T), -edge_value))
    parent = list(range(len(values)))
    birth = list(range(len(values)))  # root -> its maximum vertex
    vals = values.tolist()

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = []
    for (u, v), level in zip(edges[order].tolist(), edge_value[order].tolist()):
        ru, rv = find(u), find(v)
        if ru == rv:
            continue
        if (vals[birth[ru]], -birth[ru]) < (vals[birth[rv]], -birth[rv]):
            ru, rv = rv, ru  # ru is now the elder
        if vals[birth[rv]] > level:
            pairs.append((vals[birth[rv]], level, birth[rv], u if vals[u] == level else v))
        parent[rv] = ru
    roots = {find(v) for v in range(len(values))}
    pairs += [(vals[birth[r]], -np.inf, birth[r], -1) for r in roots]
    pairs.sort(key=lambda p: p[1] - p[0])
    b, d, bv, dv = (np.array(x) for x in zip(*pairs))
    return Persistence(b.astype(float), d.astype(float), bv.astype(int), dv.astype(int))


@dataclass(frozen=True)
class MeshSignature:
    """Superlevel counts per level on a mesh, comparable with ``LevelSetSignature``."""

    levels: np.ndarray
    level_frac: np.ndarray
    n_components: np.ndarray  # b0 of {f >= level}
    n_loop: np.ndarray  # closed level curves inside the domain
    n_boundary: np.ndarray  # components reaching the mesh boundary
    persistence: Persistence

    def to_dict(self) -> dict:
        return {"levels": self.levels.tolist(), "level_frac": self.level_frac.tolist(),
                "n_components": self.n_components.tolist(), "n_loop": self.n_loop.tolist(),
                "n_boundary": self.n_boundary.tolist(), "persistence": self.persistence.to_dict()}


def mesh_signature(vertex_values, mesh: SphereMesh, n_levels: int = 21) -> MeshSignature:
    """Counts at ``linspace(min, max, n_levels)`` (the chart signature's levels) and persistence."""
    values = _check(vertex_values, mesh)
    if n_levels < 2:
        raise AnalysisError(f"n_levels must be at least 2, got {n_levels}")
    levels = np.linspace(values.min(), values.max(), n_levels)
    vmax = values.max()
    if vmax <= 0:
        raise AnalysisError("vertex_values must have a positive maximum (levels are normalised by it)")
    edges = mesh.edges
    edge_min = values[edges].min(axis=1)
    tri_min = values[mesh.triangles].min(axis=1)
    n = len(values)
    counts = np.zeros((3, n_levels), dtype=int)
    for k, level in enumerate(levels):
        inside = values >= level
        keep = edge_min >= level
        graph = coo_matrix((np.ones(keep.sum()), (edges[keep, 0], edges[keep, 1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        comps = np.unique(labels[inside])
        touching = np.unique(labels[inside & mesh.boundary])
        b0 = comps.size
        if inside.all():  # the whole domain: no level curve inside it
            n_loop = 0
        else:
            euler = inside.sum() - keep.sum() + np.sum(tri_min >= level)
            n_loop = b0 - touching.size + (b0 - euler)
        counts[:, k] = b0, n_loop, touching.size
    return MeshSignature(levels, levels / vmax, *counts, superlevel_persistence(values, mesh))


def grid_signature(values, theta=None, phi=None, n_levels: int = 21) -> MeshSignature:
    """``mesh_signature`` of a chart map ``values[i, j]`` at ``(theta[i], phi[j])`` on its grid mesh
    (default axes: even spacing over ±π/2, as in ``levelset_signature``)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise AnalysisError(f"values must be a 2-D map, got shape {values.shape}")
    theta = np.linspace(-np.pi / 2, np.pi / 2, values.shape[0]) if theta is None else theta
    phi = np.linspace(-np.pi / 2, np.pi / 2, values.shape[1]) if phi is None else phi
    mesh = grid_mesh(theta, phi)
    return mesh_signature(mesh.grid_to_vertices(values), mesh, n_levels)
