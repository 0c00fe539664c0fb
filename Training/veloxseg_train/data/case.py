"""What a raw training case is: its files, its loaded images, and the error every data problem raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SOURCES = ("synthetic", "ibsi", "autopet", "folder")


class DataError(ValueError):
    """A problem with one case (or one data folder); the message names the case and the problem."""

    def __init__(self, case: str, problem: str):
        self.case = case
        self.problem = problem
        super().__init__(f"case {case}: {problem}")


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's three images are. `label` is None only while a reader is still collecting files."""

    name: str
    source: str
    ct: Optional[Path]
    pet: Optional[Path]
    label: Optional[Path]
    organs: Optional[Path] = None  # organ codes (organs.ORGAN_NAMES) on the PET grid, where the case has them


@dataclass
class LoadedCase:
    """A case whose images were read and validated (see `validate.load_case`)."""

    name: str
    source: str
    ct: object  # SimpleITK.Image, HU
    pet: object  # SimpleITK.Image, SUV
    label: object  # SimpleITK.Image, 0/1, on the PET or the CT grid
    files: CaseFiles
