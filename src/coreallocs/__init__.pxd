# `cimport coreallocs` gives the C-level API declared in _core.pxd.
from coreallocs._core cimport *
