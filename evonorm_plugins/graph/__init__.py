"""The layer graph: genomes (DAGs of primitive ops), their canonical form, formulas and the module that runs them."""
from .genome import SCHEMA_VERSION, Genome, GenomeError, Node, genome_from_ops
from .module import GraphNormAct, default_no_act_genome
from .primitives import AGGREGATION_OPS, ELEMENTWISE_OPS, INITIAL_NODES, PRIMITIVES

__all__ = [
    "SCHEMA_VERSION",
    "Genome",
    "GenomeError",
    "Node",
    "genome_from_ops",
    "GraphNormAct",
    "default_no_act_genome",
    "AGGREGATION_OPS",
    "ELEMENTWISE_OPS",
    "INITIAL_NODES",
    "PRIMITIVES",
]
