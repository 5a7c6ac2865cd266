"""Split the frames of a series into stacks, and choose the volume among several candidate stacks.

A true Enhanced MR object (one multi-frame instance, common in Philips and Siemens XA exports) may hold several
stacks: different orientations (an axial acquisition and its sagittal / coronal reformats) or several
series-like stacks, told apart by ``FrameContentSequence > StackID`` (and ``InStackPositionNumber``). Such an
object is split, not refused: frames are grouped by StackID and, within it, by orientation (frames without a
StackID, from classic single-frame files, form one group per orientation). Each group is a candidate volume; the
candidates that form a regular 3-D stack are compared and the finest one is used: smallest voxel volume, then
most slices, then the first stack in the object. Which stack was used is said in a note (study warnings).
A series of single-frame files is never split: mixed orientations there stay an error (not a scanner export).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from node.errors import GeometryError

F = TypeVar("F")


@dataclass(frozen=True)
class Stack(Generic[F]):
    """One group of frames: its StackID ("" when none) and orientation (6 direction cosines, rounded)."""

    stack_id: str
    orientation: tuple[float, ...]
    frames: tuple[F, ...]

    def describe(self) -> str:
        name = f"stack {self.stack_id}" if self.stack_id else "a stack"
        return f"{name} ({len(self.frames)} frames, orientation {_plane(self.orientation)})"


def _plane(orientation: Sequence[float]) -> str:
    normal = np.abs(np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:])))
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def split_stacks(frames: Sequence[F], stack_id: Callable[[F], str],
                 orientation: Callable[[F], npt.NDArray[np.float64]]) -> list[Stack[F]]:
    """Group ``frames`` by (StackID, orientation rounded to 1e-3), in order of first appearance."""
    groups: dict[tuple[str, tuple[float, ...]], list[F]] = {}
    for frame in frames:
        key = (stack_id(frame), tuple(round(float(v), 3) + 0.0 for v in orientation(frame)))
        groups.setdefault(key, []).append(frame)
    return [Stack(sid, orient, tuple(group)) for (sid, orient), group in groups.items()]


def choose_volume(candidates: Sequence[tuple[Stack[F], Callable[[], sitk.Image]]],
                  what: str) -> tuple[sitk.Image, str]:
    """Build every candidate's volume (those that are not a regular 3-D stack drop out) and return the finest
    with a note naming it; :class:`GeometryError` when none forms a volume."""
    built: list[tuple[tuple[float, int, int], sitk.Image, Stack[F]]] = []
    problems: list[str] = []
    for order, (stack, build) in enumerate(candidates):
        try:
            image = build()
        except GeometryError as exc:
            problems.append(f"{stack.describe()}: {exc.message}")
            continue
        voxel = float(np.prod(image.GetSpacing()))
        built.append(((voxel, -image.GetSize()[2], order), image, stack))
    if not built:
        raise GeometryError(f"{what} holds {len(candidates)} stacks and none is a regular 3-D volume: "
                            + "; ".join(problems))
    built.sort(key=lambda item: item[0])
    _, image, stack = built[0]
    note = (f"{what} holds {len(candidates)} stacks (Enhanced MR); {stack.describe()} was used as the volume, "
            f"spacing {' x '.join(f'{s:.2f}' for s in image.GetSpacing())} mm")
    return image, note
