"""What an experiment needs before it runs: a dataset on disk, checked once, or :class:`DataMissing`."""
from __future__ import annotations

import os

from .base import DataMissing

#: (dataset, split, data_dir, search dirs) whose download already failed in this process: a main job
#: without network asks the mirrors once, not once per experiment or unit.
_DOWNLOAD_FAILED: dict[tuple, str] = {}

#: Where scripts/run.sh looks (beside the repository root) when $DEPTHSCOPE_DATA is unset.
RUN_SH_DATA_DIR = "../shared/data/mnist"


def where_files_go(message: str) -> str:
    """The data module's 'put the files here' message, plus the scripts/run.sh convention."""
    return (f"{message}. scripts/run.sh also looks in {RUN_SH_DATA_DIR} (beside the repository root) "
            "when DEPTHSCOPE_DATA is unset")


def require(dataset: str, split: str = "any", data_dir: str | os.PathLike | None = None) -> None:
    """Return when ``dataset``/``split`` is on disk (or downloads); else raise :class:`DataMissing`
    naming the files and where they go. A failed download is not retried in this process."""
    from ..data import DataNotFound, locate, search_dirs

    try:
        locate(dataset, split, data_dir, download=False)
        return
    except DataNotFound:
        pass
    key = (dataset, split, str(data_dir), tuple(str(d) for d in search_dirs(dataset, data_dir)))
    if key not in _DOWNLOAD_FAILED:
        try:
            locate(dataset, split, data_dir, download=True)
            return
        except DataNotFound as e:
            _DOWNLOAD_FAILED[key] = str(e)
    from ..data import missing_message

    raise DataMissing(dataset, where_files_go(missing_message(dataset, split, data_dir)))


def require_if_pending(exp, ctx, dataset: str, split: str = "any") -> None:
    """:func:`require` the dataset only when some of ``exp``'s units are not yet in the store (a finished
    experiment redraws its figures without the data)."""
    done = ctx.store.done_keys(exp.name)
    if any(u.key not in done for u in exp.units(ctx.params)):
        require(dataset, split, ctx.data_dir)
