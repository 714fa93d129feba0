"""evonorm-plugins: EvoNorm normalization-activation layers and their framework plugins.

``import evonorm_plugins`` loads only torch; the framework integrations live in submodules that are
imported on demand.
"""
from . import functional
from .graph import Genome, GenomeError, GraphNormAct
from .layers import (
    EvoNormB0,
    EvoNormB1,
    EvoNormB2,
    EvoNormBase,
    EvoNormBatch,
    EvoNormS0,
    EvoNormS1,
    EvoNormS2,
    EvoNormSample,
)
from .layers.baselines import BatchNormReLU, BatchNormSiLU, GroupNormReLU, GroupNormSiLU
from .registry import (
    UnknownLayerError,
    get_genome,
    get_layer,
    get_layer_class,
    list_layers,
    load_genomes,
    paper_genome,
    register_layer,
)
from .sync import convert_sync_evonorm

__version__ = "0.1.0"

__all__ = [
    "functional",
    "EvoNormBase",
    "EvoNormBatch",
    "EvoNormSample",
    "EvoNormB0",
    "EvoNormB1",
    "EvoNormB2",
    "EvoNormS0",
    "EvoNormS1",
    "EvoNormS2",
    "BatchNormReLU",
    "BatchNormSiLU",
    "GroupNormReLU",
    "GroupNormSiLU",
    "Genome",
    "GenomeError",
    "GraphNormAct",
    "UnknownLayerError",
    "get_genome",
    "get_layer",
    "get_layer_class",
    "list_layers",
    "load_genomes",
    "paper_genome",
    "register_layer",
    "convert_sync_evonorm",
]
