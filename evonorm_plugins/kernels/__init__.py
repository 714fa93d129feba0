"""Memory-lean EvoNorm kernels: autograd Functions that save only the input and small statistics and
apply closed-form gradients. The reference implementations in :mod:`evonorm_plugins.functional`
remain the specification; tests hold the two to the same numbers."""
