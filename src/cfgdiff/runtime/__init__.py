"""What training and sampling share at run time, importing nothing else of the package.

* ``checkpoint``: safetensors checkpoints with JSON metadata (atomic writes, never a pickle);
* ``cache``: the cache directory;
* ``distributed``: the torchrun process group (``DistContext``).
"""
