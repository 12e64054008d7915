"""Superlevel topology on sphere meshes agrees with the chart inside it and drops the border."""
import json

import numpy as np
import pytest

from analysis import AnalysisError
from analysis.persistence import (grid_mesh, grid_signature, icosphere, mesh_signature,
                                  superlevel_persistence)
from analysis.topology import levelset_signature
from analysis.tuning import sphere_points

FINE = np.deg2rad(np.arange(-90, 91))


def vmf_at(points, centre, kappa):
    return np.exp(kappa * (points @ sphere_points(*centre) - 1))


def euler(mesh):
    return len(mesh.vertices) - len(mesh.edges) + len(mesh.triangles)


def test_meshes_are_a_disk_and_a_sphere():
    hemisphere = grid_mesh(FINE, FINE)
    assert len(hemisphere.vertices) == 181 * 181 - 2 * 180  # each pole row is one vertex
    assert euler(hemisphere) == 1
    np.testing.assert_allclose(np.abs(hemisphere.vertices[hemisphere.boundary, 0]), 0, atol=1e-12)
    sphere = icosphere(3)
    assert len(sphere.vertices) == 642 and euler(sphere) == 2 and not sphere.boundary.any()
    np.testing.assert_allclose(np.linalg.norm(sphere.vertices, axis=1), 1)


def two_bumps(points):
    return vmf_at(points, (np.deg2rad(-35), 0.0), 6.0) + 0.6 * vmf_at(points, (np.deg2rad(35), 0.0), 6.0)


def test_mesh_agrees_with_the_chart_on_interior_peaks():
    values = two_bumps(sphere_points(FINE[:, None], FINE[None, :]))
    chart = levelset_signature(values, theta=FINE, phi=FINE)
    mesh = grid_signature(values, FINE, FINE)
    np.testing.assert_allclose(mesh.levels, chart.levels)
    border = max(values[0].max(), values[-1].max(), values[:, 0].max(), values[:, -1].max())
    interior = (chart.levels > border) & (chart.levels < values.max())
    assert interior.sum() >= 15
    np.testing.assert_array_equal(mesh.n_components[interior], chart.n_loop[interior])
    np.testing.assert_array_equal(mesh.n_loop[interior], chart.n_loop[interior])
    assert np.all(mesh.n_boundary[interior] == 0)
    assert 2 in mesh.n_components  # the comparison covers the split
    # Persistence: two peaks; the smaller dies at the saddle, found on the equator between them.
    equator = values[:, 90]
    saddle = equator[np.argmax(equator[:90]):90 + np.argmax(equator[90:])].min()
    pers = mesh.persistence
    assert pers.n_peaks(0.05) == 2
    assert pers.births[:2] == pytest.approx([values.max(), equator[90:].max()])
    assert pers.deaths[0] == -np.inf and pers.deaths[1] == pytest.approx(saddle)
    json.dumps(mesh.to_dict())


def test_counts_match_the_persistence_pairs():
    rng = np.random.default_rng(0)
    sphere = icosphere(3)
    values = rng.standard_normal(len(sphere.vertices))
    sig = mesh_signature(values, sphere, n_levels=31)
    pers = sig.persistence
    alive = [(np.sum((pers.births >= level) & (pers.deaths < level))) for level in sig.levels]
    np.testing.assert_array_equal(sig.n_components, alive)
    assert pers.n_peaks() > 10  # random vertex values have many maxima


@pytest.mark.parametrize("centre", [(np.pi / 2, 0.0), (0.3, np.pi / 2)], ids=["border", "pole"])
def test_icosphere_removes_the_chart_border(centre):
    chart_values = vmf_at(sphere_points(FINE[:, None], FINE[None, :]), centre, 4.0)
    chart = levelset_signature(chart_values)
    inner = slice(1, -1)
    assert chart.n_loop[inner].sum() == 0 and np.all(chart.n_line[inner] >= 1)  # the artefact
    sphere = icosphere(5)
    sig = mesh_signature(vmf_at(sphere.vertices, centre, 4.0), sphere)
    assert np.all(sig.n_loop[inner] == 1) and np.all(sig.n_components[inner] == 1)
    assert sig.n_boundary.sum() == 0 and sig.persistence.n_peaks(0.01) == 1


def test_holes_count_as_loops():
    """A band around the equator (low at both poles) is one component bounded by two loops."""
    sphere = icosphere(4)
    values = 1.0 - np.abs(sphere.vertices[:, 2])
    sig = mesh_signature(values, sphere)
    inner = slice(1, -1)
    assert np.all(sig.n_components[inner] == 1) and np.all(sig.n_loop[inner] == 2)
    assert sig.n_loop[0] == 0  # the whole sphere has no level curve


def test_a_height_function_has_one_peak():
    sphere = icosphere(3)
    pers = superlevel_persistence(sphere.vertices @ [0.2, -0.5, 0.8], sphere)
    assert len(pers.births) == 1 and pers.deaths[0] == -np.inf
    assert pers.birth_vertex[0] == np.argmax(sphere.vertices @ [0.2, -0.5, 0.8])


def test_mesh_rejects_bad_input():
    sphere = icosphere(1)
    with pytest.raises(AnalysisError, match="vertex_values"):
        mesh_signature(np.ones(5), sphere)
    with pytest.raises(AnalysisError, match="not built from a grid"):
        sphere.grid_to_vertices(np.ones((3, 3)))
    with pytest.raises(AnalysisError, match="subdivisions"):
        icosphere(9)
    with pytest.raises(AnalysisError, match="theta"):
        grid_mesh(FINE[::-1], FINE)
