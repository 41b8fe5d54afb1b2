"""The release catalog: known trains, their releases, and the support matrix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from esc.release.numbers import ReleaseNumber, ReleaseNumberError

VIMS = ("openstack", "vmware", "kvm", "csp", "local")
SHIPPED = Path(__file__).with_name("catalog.toml")
FORMAT = 1


class CatalogError(ValueError):
    """The catalog file cannot be used; the message names the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accepts(_Strict):
    backup_restore: list[str] = Field(default_factory=list)
    in_service: list[str] = Field(default_factory=list)


class Train(_Strict):
    name: Annotated[str, Field(pattern=r"^\d+\.\d+$")]
    releases: Annotated[list[str], Field(min_length=1)]
    accepts: dict[str, Accepts] = Field(default_factory=dict)

    @property
    def latest(self) -> ReleaseNumber:
        return max(ReleaseNumber.parse(r) for r in self.releases)


class Catalog(_Strict):
    format: int
    train: list[Train]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        if self.format != FORMAT:
            raise ValueError(f"catalog format {self.format} is not supported (expected {FORMAT})")
        names = [t.name for t in self.train]
        if [ReleaseNumber.parse(n) for n in names] != sorted(ReleaseNumber.parse(n) for n in names):
            raise ValueError("trains must be listed oldest first")
        if len(set(names)) != len(names):
            raise ValueError("a train is listed twice")
        for train in self.train:
            for release in train.releases:
                if ReleaseNumber.parse(release).train != train.name:
                    raise ValueError(f"release {release} is listed under train {train.name}")
            for vim, accepts in train.accepts.items():
                if vim not in VIMS:
                    raise ValueError(f"train {train.name}: unknown VIM {vim!r}")
                for source in accepts.backup_restore + accepts.in_service:
                    if source not in names or ReleaseNumber.parse(source) >= ReleaseNumber.parse(
                        train.name
                    ):
                        raise ValueError(
                            f"train {train.name} accepts {source!r}, which is not "
                            "an older train of this catalog"
                        )
        return self

    def find_train(self, name: str) -> Train | None:
        return next((t for t in self.train if t.name == name), None)

    def knows(self, release: ReleaseNumber) -> bool:
        """A listed release, or a train named by its two-part number."""
        train = self.find_train(release.train)
        if train is None:
            return False
        return len(release.parts) == 2 or release in {
            ReleaseNumber.parse(r) for r in train.releases
        }


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or SHIPPED
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror}") from None
    return parse_catalog(text, str(path))


def parse_catalog(text: str, source: str) -> Catalog:
    """A catalog from its TOML text (`source` names it in errors: a file, a wheel)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {source} is not valid TOML: {exc}") from None
    try:
        return Catalog.model_validate(raw)
    except (ValidationError, ReleaseNumberError) as exc:
        raise CatalogError(f"catalog {source} is invalid: {exc}") from None
