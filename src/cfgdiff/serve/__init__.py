"""``cfgdiff serve``: a live guidance explorer, a local web page where dragging w redraws a grid of samples.

``Explorer`` (explorer.py) checks a grid request and samples it from a model under a lock;
``ExplorerServer`` (server.py) serves the page and the JSON API with the standard library's
``ThreadingHTTPServer`` on 127.0.0.1 (why no web framework: see server.py); ``explorer_methods``
(methods.py) lists the guidance methods the page offers, read from ``cfgdiff.guidance``'s registry when it has
one; images.py turns samples into PNG mosaics without matplotlib.

    from cfgdiff.serve import Explorer, ExplorerServer
    explorer = Explorer(model, data_shape=model.data_shape, class_names=model.class_names, x_bound=model.x_bound)
    with ExplorerServer(explorer, port=0) as server:
        print(server.url)
"""

from cfgdiff.serve.explorer import BusyError, Explorer, GridRequest, GridResult, Limits, RequestError
from cfgdiff.serve.methods import Method, Param, explorer_methods
from cfgdiff.serve.server import ExplorerServer, is_loopback

__all__ = [
    "BusyError",
    "Explorer",
    "ExplorerServer",
    "GridRequest",
    "GridResult",
    "Limits",
    "Method",
    "Param",
    "RequestError",
    "explorer_methods",
    "is_loopback",
]
