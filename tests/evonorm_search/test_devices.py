"""Any accelerator: the proxy trainer takes accelerator and devices from the config, and workers share
devices (workers_per_device); everything here runs on CPU."""
import time

import pytest

pytest.importorskip("pytorch_lightning")

import evonorm_plugins as ep  # noqa: E402
from evonorm_search.config import SearchConfig, execution_config  # noqa: E402
from evonorm_search.evaluator import EvaluationConfig, evaluate_layer  # noqa: E402
from evonorm_search.execution import ExecutorConfig, ProcessExecutor  # noqa: E402
from evonorm_search.proxy import ArchitectureConfig  # noqa: E402

import search_tasks  # noqa: E402


def test_workers_share_devices_in_order():
    config = ExecutorConfig(devices=2, workers_per_device=3)
    assert config.worker_count == 6 and [config.device_of(i) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert ExecutorConfig(workers=4).worker_count == 4 and ExecutorConfig(workers=4).device_of(3) is None
    with pytest.raises(ValueError, match=r"workers=4 does not match devices=2 × workers_per_device=3; leave workers out or set it to 6"):
        ExecutorConfig(workers=4, devices=2, workers_per_device=3)
    with pytest.raises(ValueError, match=r"workers_per_device\n  Input should be greater than or equal to 1"):
        ExecutorConfig(devices=1, workers_per_device=0)


def test_each_local_worker_sees_only_its_device():
    executor = ProcessExecutor(ExecutorConfig(devices=2, workers_per_device=1))
    try:
        for key in range(2):
            executor.submit(key, search_tasks.visible_device, 1.0)
        seen, deadline = [], time.time() + 240
        while len(seen) < 2 and time.time() < deadline:
            seen += executor.wait(timeout=0.5)
    finally:
        executor.shutdown()
    assert sorted(outcome.scores[0] for _, outcome in seen) == [0.0, 1.0]


def test_accelerator_and_devices_come_from_the_config():
    config = SearchConfig.from_dict({"evaluation": {"accelerator": "auto", "devices": 1}})
    assert (config.evaluation.accelerator, config.evaluation.devices) == ("auto", 1)
    assert execution_config({"execution": {"devices": 1, "workers_per_device": 4}}).worker_count == 4
    with pytest.raises(ValueError, match=r"evaluation.accelerator: Input should be 'cpu', 'cuda', 'gpu', 'mps', 'tpu', 'xla' or 'auto'"):
        SearchConfig.from_dict({"evaluation": {"accelerator": "cuda0"}})


def test_a_proxy_training_on_the_auto_accelerator():
    """'auto' trains on whatever this machine has (here, in CI: the CPU)."""
    config = EvaluationConfig(architectures=(ArchitectureConfig("resnet50v2", 0.125, (1, 1, 1, 1), steps=3),),
                              data_dir=None, data_limit=200, batch_size=16, quality=False, stability=False,
                              accelerator="auto", devices=1)
    outcome = evaluate_layer(ep.get_layer_class("EvoNormS0"), config)
    assert outcome.scores is not None and 0.0 <= outcome.scores[0] <= 1.0, outcome


def test_the_seed_sets_the_initialization_whatever_ran_before():
    import torch

    from evonorm_search.evaluator import _build

    architecture = ArchitectureConfig("resnet50v2", 0.125, (1, 1, 1, 1))
    first = _build(architecture, ep.get_layer_class("BatchNormReLU"), seed=3).state_dict()
    torch.randn(1000)  # another candidate's draws
    again = _build(architecture, ep.get_layer_class("BatchNormReLU"), seed=3).state_dict()
    other = _build(architecture, ep.get_layer_class("BatchNormReLU"), seed=4).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
