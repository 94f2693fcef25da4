"""Training entrypoints, one package each: ``train.embed``, ``train.sft_classify``, ``train.seq_classify``,
``train.mine``, ``train.sweep``. A package's ``__main__.py`` is the entrypoint (``python -m train.embed``,
``accelerate launch -m train.embed``); the modules beside it are its library, one concern each; ``train.common``
holds the steps the entrypoints share."""

import lorasmith  # noqa: F401  (first: lorasmith.console silences library noise before peft is imported)


def entrypoint_attributes(package: str):
    """A module ``__getattr__`` for an entrypoint package: ``from train.embed import main, make_parser`` gives the
    ``__main__.py`` functions, imported on first use (the package's library modules import without them)."""

    def __getattr__(name: str):
        if name not in ("main", "make_parser"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        from importlib import import_module

        return getattr(import_module(f"{package}.__main__"), name)

    return __getattr__
