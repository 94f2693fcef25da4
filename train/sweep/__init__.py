"""Sweeps: many ordinary training runs (cells) from one sweep file, then one results table, matrix and plots.

One concern per module:

- ``spec``     read and validate the sweep file (+ command-line overrides) into a ``SweepSpec``
- ``grid``     expand ``grid:`` into the list of cell values (cartesian product; paired keys move together)
- ``naming``   a cell's folder name from its values (stable, filesystem-safe, hashed when lossy or long)
- ``cells``    a cell's recipe, folder and command line (``python -m train.X`` or ``accelerate launch``)
- ``state``    what a cell folder says: finished / failed / interrupted / pending, and the sweep's markers
- ``runner``   run cells one after another on this machine (progress, ETA, failures recorded, resume)
- ``search``   Optuna random / TPE search whose trials are cells (study stored in the sweep folder)
- ``suite``    evaluate a finished cell with an ``eval.matrix`` suite (subprocess; results in the cell folder)
- ``slurm``    submit the unfinished cells as one SLURM job array through ``slurm/launch.slurm``
- ``results``  aggregate the cell folders into results.csv / results.json / matrix.npy
- ``plots``    heat map (cells x eval tasks) and grouped bar charts of loss sweeps

The boundary with the entrypoints is files only: the sweep writes ``cells/<name>/cell.yaml`` and runs the
entrypoint on it in a subprocess; the entrypoint writes ``metrics.json`` / ``lorasmith.json`` / the model in
that same folder, which the sweep reads. Nothing here imports ``train.embed`` & co.
"""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
