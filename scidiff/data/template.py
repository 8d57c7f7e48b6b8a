"""What is needed to write generated fields back in the shape of the source file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scidiff.data._backends import clean_value

__all__ = ["VariableTemplate", "CoordTemplate", "FieldTemplate"]


@dataclass(frozen=True, eq=False)
class VariableTemplate:
    """One source variable: its name, its attrs (units, long_name, ...) and its channels.

    A variable holds one channel, or ``len(channel_labels)`` channels stacked along
    ``channel_dim`` (e.g. the ``channel`` axis of an HDF5 dataset ``[N, C, H, W]``).
    """

    name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    channel_dim: str | None = None
    channel_labels: tuple[Any, ...] | None = None

    @property
    def num_channels(self) -> int:
        return 1 if self.channel_labels is None else len(self.channel_labels)

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names: the variable name, or ``name[label]`` for each label."""
        if self.channel_labels is None:
            return (self.name,)
        return tuple(f"{self.name}[{label}]" for label in self.channel_labels)

    @property
    def units(self) -> str | None:
        units = self.attrs.get("units")
        return None if units is None else str(units)


@dataclass(frozen=True, eq=False)
class CoordTemplate:
    """A coordinate along the spatial (or channel) dims: ``values`` has shape ``[size of each dim]``."""

    name: str
    dims: tuple[str, ...]
    values: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FieldTemplate:
    """How fields ``x`` of shape ``[n, C, *spatial]`` map back onto the source's variables.

    Channels are the variables' channels in order; ``spatial_dims`` and
    ``spatial_shape`` give the grid; ``coords`` the spatial coordinates; ``attrs``
    the file's global attributes; ``cond_names`` the columns of the conditioning
    vector ``[n, P]``.  JSON-serialisable through :meth:`to_dict`, so it can be
    saved with a model checkpoint and fields written without the source file.
    """

    source: str
    sample_dim: str
    spatial_dims: tuple[str, ...]
    spatial_shape: tuple[int, ...]
    variables: tuple[VariableTemplate, ...]
    coords: tuple[CoordTemplate, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    cond_names: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c for v in self.variables for c in v.channels)

    @property
    def num_channels(self) -> int:
        return sum(v.num_channels for v in self.variables)

    @property
    def channel_variables(self) -> tuple[str, ...]:
        """For each channel, the name of the variable it comes from."""
        return tuple(v.name for v in self.variables for _ in range(v.num_channels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (inverse of :meth:`from_dict`)."""
        return {
            "source": self.source,
            "sample_dim": self.sample_dim,
            "spatial_dims": list(self.spatial_dims),
            "spatial_shape": list(self.spatial_shape),
            "variables": [
                {
                    "name": v.name,
                    "attrs": {k: clean_value(a) for k, a in v.attrs.items()},
                    "channel_dim": v.channel_dim,
                    "channel_labels": None if v.channel_labels is None else [clean_value(x) for x in v.channel_labels],
                }
                for v in self.variables
            ],
            "coords": [
                {
                    "name": c.name,
                    "dims": list(c.dims),
                    "values": _values_to_list(c.values),
                    "dtype": str(c.values.dtype) if c.values.dtype.kind in "biuf" else "str",
                    "attrs": {k: clean_value(a) for k, a in c.attrs.items()},
                }
                for c in self.coords
            ],
            "attrs": {k: clean_value(a) for k, a in self.attrs.items()},
            "cond_names": list(self.cond_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldTemplate:
        """Rebuild a template written by :meth:`to_dict`."""
        try:
            return cls(
                source=str(data["source"]),
                sample_dim=str(data["sample_dim"]),
                spatial_dims=tuple(data["spatial_dims"]),
                spatial_shape=tuple(int(s) for s in data["spatial_shape"]),
                variables=tuple(
                    VariableTemplate(
                        name=v["name"],
                        attrs=dict(v.get("attrs", {})),
                        channel_dim=v.get("channel_dim"),
                        channel_labels=None if v.get("channel_labels") is None else tuple(v["channel_labels"]),
                    )
                    for v in data["variables"]
                ),
                coords=tuple(
                    CoordTemplate(
                        name=c["name"],
                        dims=tuple(c["dims"]),
                        values=np.asarray(c["values"], dtype=None if c.get("dtype") == "str" else c.get("dtype")),
                        attrs=dict(c.get("attrs", {})),
                    )
                    for c in data.get("coords", [])
                ),
                attrs=dict(data.get("attrs", {})),
                cond_names=tuple(data.get("cond_names", ())),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a FieldTemplate dictionary: missing or bad entry {err}") from err


def _values_to_list(values: np.ndarray) -> list[Any]:
    if values.dtype.kind in "biuf":
        return values.tolist()
    return np.asarray(values).astype(str).tolist()
