"""demux: separate mixed signals into their sources.

    >>> import demux                                          # doctest: +SKIP
    >>> result = demux.separate(mixture, 16000, "audio-stft")  # doctest: +SKIP
    >>> result.stems["pitched"].shape                          # doctest: +SKIP

The library's entry points are imported lazily so that ``import demux`` (and the
CLI's ``--help``) stay fast.
"""

__version__ = "0.1.0"

__all__ = ["Separation", "Separator", "load_recipe", "separate"]


def __getattr__(name: str):
    if name in ("Separation", "Separator", "separate"):
        from demux import pipeline

        return getattr(pipeline, name)
    if name == "load_recipe":
        from demux.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'demux' has no attribute {name!r}")
