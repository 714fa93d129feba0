"""The search config's schema (pydantic over the config dataclasses): every bad value named in one line,
with the closest valid name for a misspelled key, before anything runs; and the checks that need the
data and the proxies, before the store is written."""
import pytest

from evonorm_search.config import (
    ConfigError,
    SearchConfig,
    load_search_file,
    parse_search_file,
    read_yaml,
)
from evonorm_search.evaluator import EvaluationConfig
from evonorm_search.preflight import check_evaluation
from evonorm_search.proxy import ArchitectureConfig

BAD = [
    ({"budgett": 3}, r"^f.yaml: unknown key 'budgett'; did you mean 'budget'\?$"),
    ({"budget": -5}, r"^f.yaml: budget: Input should be greater than 0 \(got -5\)$"),
    ({"evaluation": {"quality_threshold": 1.5}}, r"evaluation.quality_threshold: Input should be less than 1 \(got 1.5\)"),
    ({"evaluation": {"batch_size": 0}}, r"evaluation.batch_size: Input should be greater than 0"),
    ({"evaluation": {"batchsize": 4}}, r"unknown key 'evaluation.batchsize'; did you mean 'batch_size'\?"),
    ({"evaluation": {"architectures": [{"name": "resnet50"}]}},
     r"^f.yaml: evaluation.architectures.0: unknown proxy architecture 'resnet50'; did you mean 'resnet50v2'\? choose from"),
    ({"evaluation": {"architectures": [{"name": "resnet50v2", "widht": 1}]}},
     r"^f.yaml: unknown key 'evaluation.architectures.0.widht'; did you mean 'width'\?$"),
    ({"evaluation": {"architectures": []}}, r"evaluation.architectures: Tuple should have at least 1 item"),
    ({"evaluation": {"val_fraction": 0.6, "heldout_fraction": 0.5}}, r"val_fraction \+ heldout_fraction must leave images to train on"),
    ({"evaluation": {"accelerator": "cuda0"}}, r"evaluation.accelerator: Input should be 'cpu', 'cuda'"),
    ({"population_size": 4, "tournament_size": 5}, r"^f.yaml: tournament_size \(5\) must not exceed population_size \(4\)$"),
    ({"strategy": "evo"}, r"strategy: Input should be 'evolution' or 'random'"),
    ({"random_while_filling": 2}, r"random_while_filling: Input should be less than or equal to 1"),
    ({"fidelity": {"eta": 1}}, r"fidelity.eta: Input should be greater than or equal to 2"),
    ({"space": 3}, r"space: expected a mapping of settings"),
    ({"space": {"ops": ["softmax"]}}, r"space: unknown ops \['softmax'\]"),
    ({"executon": {}}, r"unknown key 'executon'; did you mean 'execution'\?"),
    ({"execution": {"workrs": 2}}, r"^f.yaml, execution: unknown key 'workrs'; did you mean 'workers'\?$"),
    ({"execution": {"workers": -1}}, r"execution: workers: Input should be greater than or equal to 0"),
    ({"execution": {"backend": "slurm"}}, r"execution: backend: Input should be 'local' or 'ray'"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[str(d) for d, _ in BAD])
def test_each_bad_setting_is_one_line_naming_it(data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_search_file(data, "f.yaml")
    assert "\n" not in str(caught.value)


def test_numbers_yaml_reads_as_strings_are_numbers():
    parsed = parse_search_file({"budget": "10", "evaluation": {"stability_threshold": "1.0e8", "train_steps": 5.0}}, "f.yaml")
    assert parsed.search.budget == 10 and parsed.search.evaluation.stability_threshold == 1e8
    assert parsed.search.evaluation.train_steps == 5 and parsed.execution.workers == 0


def test_configs_built_in_code_are_checked_too():
    from dataclasses import replace

    with pytest.raises(ValueError, match="budget"):
        replace(SearchConfig(), budget=0)
    with pytest.raises(ValueError, match="width"):
        ArchitectureConfig("resnet50v2", width=-1)
    stored = SearchConfig().to_dict()  # the store's copy reads back as the same config
    assert SearchConfig.from_dict(stored) == SearchConfig()


@pytest.mark.parametrize("text, message", [
    ("", r"is empty; start from"),
    ("budget: 3\n  population_size: [4\n", r"f.yaml:2:\d+: YAML syntax error"),
    ("- 1\n- 2\n", r"must be a mapping of settings, got a list"),
])
def test_files_that_are_not_configs(tmp_path, text, message):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_yaml(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; see configs/search/"):
        load_search_file(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match=r"is a folder; give a YAML file"):
        load_search_file(tmp_path)


def test_the_data_and_every_proxy_are_checked_before_the_store(tmp_path, monkeypatch):
    tiny = EvaluationConfig(architectures=(ArchitectureConfig("resnet50v2", 0.125, (1, 1, 1, 1)),), data_limit=200, batch_size=8)
    check_evaluation(tiny)  # a known-good layer trains one step on every architecture
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 python batches .* cifar-10-python.tar.gz"):
        check_evaluation(EvaluationConfig(data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"batch_size 500 exceeds the 120 training images"):
        check_evaluation(EvaluationConfig(architectures=tiny.architectures, data_limit=200, batch_size=500))
    from torch import nn

    from evonorm_search.proxy import architectures

    monkeypatch.setitem(architectures.ARCHITECTURES, "resnet50v2", lambda layer, width, depth, classes: nn.Flatten())
    with pytest.raises(ConfigError, match=r"architectures.0 \(resnet50v2, width 0.125, depth \[1.0, 1.0, 1.0, 1.0\]\) cannot "
                                          r"train one step with GroupNormReLU: (RuntimeError|ValueError)"):
        check_evaluation(tiny)
