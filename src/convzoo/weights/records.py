"""Which :class:`~convzoo.models.spec.WeightRecord` a weight file has: the published record it is (the
families list them), else one built from the file and the registered model.

``load_weights`` attaches a record to every model it loads (``model.weights_meta``); convzoo checkpoints
store it. Prediction and evaluation read the preprocessing from it, and a record's ``input_affine``
(torchvision's Inception V3 ``transform_input``) is folded into the model at import. A file is the
published one when its contents match the record's hash: a file named like a published one must match
(else :class:`ChecksumError`), and a renamed copy of a published file is still found by its hash.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ChecksumError
from ..models.spec import ModelCfg, WeightRecord
from ..preprocess import Normalize
from ..registry import list_records
from ..utils.fileio import check_file, file_digest


def published_record(path: Path, model: str | None) -> WeightRecord | None:
    """The published record the file at ``path`` is: the one named like it (its hash and size must match,
    else :class:`ChecksumError`), else one of registered model ``model``'s records whose hash the file's
    contents match; None when neither (``model`` None: only the name is looked up)."""
    named = next((r for r in list_records() if r.file_name == path.name), None)
    if named is not None:
        try:
            check_file(path, named.hash, named.size)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}; the file is named as the published {named.name} weights") from None
        return named
    digests: dict[str, str] = {}
    for record in list_records(model) if model is not None else []:
        if record.hash is None or (record.size is not None and record.size != path.stat().st_size):
            continue
        algorithm, _, prefix = record.hash.partition(":")
        if algorithm not in digests:
            digests[algorithm] = file_digest(path, algorithm)
        if digests[algorithm].startswith(prefix.lower()):
            return record
    return None


def record_for_file(cfg: ModelCfg, path: str | Path, source: str, include_top: bool,
                    preprocessing: str | None = None,
                    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> WeightRecord:
    """The record of a file no published record names: its name, SHA-256 and size, and the evaluation
    transform of the registered model ``cfg`` (for a model with a Keras layout that is its Keras
    application's preprocessing). ``source`` says what the file is (its format); ``preprocessing``
    overrides the mode (a convzoo checkpoint's saved one); ``stats``, the (mean, std) per RGB channel in
    0..255 pixel units the file's own preprocessing layers apply, override both (as the mode they equal, else
    as ``'custom'``). Its classes, accuracy and parity are unknown."""
    path = Path(path)
    normalize = Normalize(mode=preprocessing or cfg.preprocessing) if stats is None else Normalize.matching(*stats)
    mode, mean, std = normalize.record()
    return WeightRecord(f"{cfg.name}.{path.stem}", cfg.name, source, None, path.name,
                        f"sha256:{file_digest(path)}", path.stat().st_size, include_top, tuple(cfg.input_size),
                        cfg.interpolation, cfg.crop_pct, mode, tuple(mean), tuple(std), None)
