"""The base layer: what every other layer imports and that imports nothing else of fastssl.

errors (typed user errors and the one-line CLI form), argtypes (flag validators, the one-line-error
parser), constants, cache (the cache folder), progress (progress bars), viz (picture grids),
checkpoint (safe, atomic checkpoint files).
"""
