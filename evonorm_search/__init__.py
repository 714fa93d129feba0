"""evonorm_search: the evolutionary search for normalization-activation layers.

Installed from the repository's ``search/`` folder under this import name. It builds on
``evonorm_plugins`` (layers, layer graph, registry); ``evonorm_plugins`` never imports it.
"""

__version__ = "0.1.0"
