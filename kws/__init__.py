"""kws: keyword spotting with state-space models.

The package reads as the pipeline: ``data`` -> ``features`` -> ``models`` ->
``training`` -> ``evaluation`` -> ``export`` -> ``streaming`` -> ``demo``.
"""

__version__ = "0.1.0"

# Bumped whenever a saved checkpoint or export sidecar changes meaning, so that
# an old file fails with a clear message instead of loading into the wrong model.
FORMAT_VERSION = 1
