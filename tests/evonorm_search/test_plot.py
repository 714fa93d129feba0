"""`evonorm_search.plot.plot_search`: progress and Pareto pictures from a search store (no search run)."""
import random

import pytest

matplotlib_image = pytest.importorskip("matplotlib.image")

from evonorm_plugins.registry import paper_genome  # noqa: E402
from evonorm_search.plot import plot_search  # noqa: E402
from evonorm_search.space import SearchSpace, random_genome  # noqa: E402
from evonorm_search.store import SearchStore  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _store(path, architectures):
    store = SearchStore(path)
    store.set_meta("config", {"evaluation": {"architectures": [{"name": name} for name in architectures]}})
    store.set_meta("baselines", {"BatchNormReLU": [0.3, 0.2][: len(architectures)], "GroupNormReLU": "rejected: quality"})
    rng = random.Random(0)
    genomes = [paper_genome(name) for name in ("EvoNormB0", "EvoNormS0", "EvoNormS1")]
    genomes += [random_genome(SearchSpace(max_nodes=8), rng) for _ in range(8)]
    for i, genome in enumerate(genomes):
        candidate = store.add(genome)
        if i % 4 == 3:
            store.reject(candidate, "stability" if i % 8 == 3 else "quality", "reason", 0.1)
        else:
            store.complete(candidate, [rng.random() for _ in architectures], 1.0)
    store.complete_as_duplicate(store.add(genomes[0]), store.finished()[0])
    return store


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib_image.imread(path).shape[:2]
    assert height > 100 and width > 100


@pytest.mark.parametrize("architectures", [("a", "b"), ("a",)])
def test_plot_search_writes_both_pictures(tmp_path, architectures):
    store = _store(tmp_path / "run.sqlite", architectures)
    out = tmp_path / "plots" / "nested"
    paths = plot_search(store, out)
    assert paths == [out / "progress.png", out / "pareto.png"]
    for path in paths:
        _assert_png(path)


def test_plot_search_of_empty_store_names_it(tmp_path):
    path = tmp_path / "empty.sqlite"
    store = SearchStore(path)
    store.add(paper_genome("EvoNormS0"))  # pending only: nothing finished yet
    with pytest.raises(ValueError, match="empty.sqlite.*no finished candidate"):
        plot_search(store, tmp_path / "plots")
    assert not (tmp_path / "plots").exists()
