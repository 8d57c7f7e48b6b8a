"""Fields in and out: users' netCDF / HDF5 files as tensors, and samples back as xarray.

* :func:`open_fields` -> :class:`FieldSource`: a lazy view of chosen variables as
  channels, ``x`` ``[N, C, *spatial]``, plus conditioning ``[N, P]``.
* :class:`FieldDataset` / :func:`make_loader`: a streamed, shuffled train/val split.
* :class:`Normalizer`: per-channel standardisation (optionally of ``log x``), fitted
  in one streaming pass, with ``log_abs_det_jacobian`` for likelihoods in data units.
* :func:`fields_to_dataset`, :func:`loglik_to_dataset`, :func:`write_netcdf`,
  :func:`write_csv`: results back out like the source, written atomically.
* :class:`DataError`: every problem with a user's file; :func:`check_spatial_size`.

See ``docs/data.md``.
"""

from scidiff.data.dataset import FieldDataset, FieldLoader, FieldStream, make_loader, split_indices
from scidiff.data.errors import DataError, check_spatial_size
from scidiff.data.normalize import Normalizer, RunningMoments
from scidiff.data.output import fields_to_dataset, loglik_to_dataset, provenance_attrs, write_csv, write_netcdf
from scidiff.data.source import FieldChunk, FieldSource, open_fields
from scidiff.data.template import CoordTemplate, FieldTemplate, VariableTemplate

__all__ = [
    "open_fields", "FieldSource", "FieldChunk", "FieldTemplate", "VariableTemplate", "CoordTemplate",
    "FieldDataset", "FieldStream", "FieldLoader", "make_loader", "split_indices",
    "Normalizer", "RunningMoments",
    "fields_to_dataset", "loglik_to_dataset", "write_netcdf", "write_csv", "provenance_attrs",
    "DataError", "check_spatial_size",
]
