"""The data split: train / search-validation / held-out, disjoint, fixed by its seed and recorded; the
search scores on search-validation only, re-ranking on held-out only."""
import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_lightning")

from evonorm_plugins.registry import paper_genome  # noqa: E402
from evonorm_search.config import SearchConfig  # noqa: E402
from evonorm_search.evaluator import EvaluationConfig, Outcome, prepare  # noqa: E402
from evonorm_search.proxy import ArchitectureConfig, CIFAR10DataModule  # noqa: E402
from evonorm_search.proxy.data import split_indices  # noqa: E402
from evonorm_search.rerank import RerankSettings, rerank  # noqa: E402
from evonorm_search.store import SearchStore  # noqa: E402


def test_split_indices_are_disjoint_cover_everything_and_depend_only_on_the_split_seed():
    parts = split_indices(1000, 0.2, 0.15, split_seed=7)
    assert [len(parts[p]) for p in ("train", "search", "heldout")] == [650, 200, 150]
    everything = torch.cat([parts["train"], parts["search"], parts["heldout"]])
    assert sorted(everything.tolist()) == list(range(1000))  # each image in exactly one part
    again = split_indices(1000, 0.2, 0.15, split_seed=7)
    assert all(torch.equal(parts[p], again[p]) for p in parts)
    assert not torch.equal(parts["heldout"], split_indices(1000, 0.2, 0.15, split_seed=8)["heldout"])
    # a different search-validation fraction leaves the held-out part as it was
    assert torch.equal(parts["heldout"], split_indices(1000, 0.3, 0.15, split_seed=7)["heldout"])
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\) and heldout_fraction in \[0, 1\) with a sum below 1"):
        split_indices(10, 0.6, 0.5, 0)


def _image_set(dataset):
    return {image.numpy().tobytes() for image, _ in dataset}


def test_no_image_is_in_two_parts_and_training_seeds_share_the_split():
    data = CIFAR10DataModule(None, batch_size=16, val_fraction=0.2, limit=500, seed=0, heldout_fraction=0.2, split_seed=3)
    data.setup()
    train, search, heldout = (_image_set(data.parts[p]) for p in ("train", "search", "heldout"))
    assert (len(train), len(search), len(heldout)) == (300, 100, 100)  # synthetic images are all distinct
    assert not train & search and not train & heldout and not search & heldout
    assert data.val_set is data.parts["search"]
    other_seed = CIFAR10DataModule(None, batch_size=16, val_fraction=0.2, limit=500, seed=5, heldout_fraction=0.2,
                                   split_seed=3, score_on="heldout")
    other_seed.setup()
    assert other_seed.split == data.split and other_seed.split["digest"] == data.split["digest"]
    assert _image_set(other_seed.val_set) == heldout  # re-ranking's validation is the held-out part
    with pytest.raises(ValueError, match="scoring on the held-out part needs heldout_fraction > 0"):
        CIFAR10DataModule(None, heldout_fraction=0.0, score_on="heldout")


EVALUATION = EvaluationConfig(architectures=(ArchitectureConfig("resnet50v2", 0.125, (1, 1, 1, 1), steps=2),),
                              data_dir=None, data_limit=200, batch_size=16, heldout_fraction=0.25)


def _store_with_a_search(path, split):
    store = SearchStore(path)
    store.set_meta("config", SearchConfig(evaluation=EVALUATION).to_dict())
    if split is not None:
        store.set_meta("split", split)
    candidate = store.add(paper_genome("EvoNormS0"))
    store.complete(candidate, (0.5,), 1.0)
    return store


def test_rerank_trains_on_the_held_out_part_only(tmp_path, monkeypatch):
    seen = []

    def fake_train(layer, config):
        seen.append((config.score_on, config.seed, config.split_seed, config.quality, config.architectures[0].steps))
        return Outcome((0.3 + 0.1 * config.seed,))

    monkeypatch.setattr("evonorm_search.trainings.train_layer", fake_train)
    store = _store_with_a_search(tmp_path / "s.sqlite", prepare(EVALUATION))
    rows = rerank(store, RerankSettings(k=1, seeds=2, steps_scale=3, baselines=("GroupNormReLU",)))
    assert sorted(seen) == [("heldout", 0, 0, False, 6)] * 2 + [("heldout", 1, 0, False, 6)] * 2
    assert {row.name for row in rows} == {"candidate 1", "GroupNormReLU"}
    assert all(np.isclose(row.mean, 0.35) for row in rows)  # seeds 0 and 1, baselines the same way


def test_rerank_refuses_a_store_whose_split_is_unknown_or_different(tmp_path):
    settings = RerankSettings(k=1, seeds=1, baselines=())
    with pytest.raises(ValueError, match="has no record of its data split"):
        rerank(_store_with_a_search(tmp_path / "old.sqlite", None), settings)
    other = dict(prepare(EVALUATION), digest="0000000000000000")
    with pytest.raises(ValueError, match="keep the data folder and evaluation.split_seed of the search"):
        rerank(_store_with_a_search(tmp_path / "moved.sqlite", other), settings)
